"""Property-based fuzzing of the HTTP API from its own OpenAPI schema: no input may cause a 5xx."""

import logging

import pytest

schemathesis = pytest.importorskip("schemathesis", reason="schemathesis not installed")
from hypothesis import HealthCheck, given, settings  # noqa: E402

from service.app import create_app  # noqa: E402
from service.generations import install, open_generation  # noqa: E402
from service.settings import Settings  # noqa: E402

pytestmark = pytest.mark.slow
EXAMPLES = 120  # per operation; 11 operations (GETs without parameters exhaust after a
# few); bench/bench_fuzz.py fuzzes deeper


def test_no_server_errors_from_generated_requests(index_ip):
    s = Settings(index_dir=str(index_ip), admin_keys=("a" * 20,), max_candidates=500)
    app = create_app(s)
    install(app.state.ebr, *open_generation(s))  # what the lifespan does when served
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    sent, errors, operations = 0, [], []
    for result in schema.get_all_operations():
        op = result.ok()
        operations.append(f"{op.method.upper()} {op.path}")

        @given(case=op.as_strategy())
        @settings(max_examples=EXAMPLES, deadline=None, database=None,
                  suppress_health_check=list(HealthCheck))
        def check(case):  # noqa: ANN001
            nonlocal sent
            response = case.call()
            sent += 1
            if response.status_code >= 500:
                errors.append((case.method, case.path, response.status_code,
                               response.text[:200]))

        check()
    assert {"POST /search", "POST /search/batch", "POST /admin/reload"} <= set(operations)
    logging.getLogger(__name__).info("fuzz: %d generated requests over %s, %d 5xx", sent,
                                     operations, len(errors))
    assert errors == []
    assert sent >= 6 * EXAMPLES, (sent, operations)  # 7 operations with parameters reach it
