"""Request dependencies: the opened index (searcher), the optional text encoder, the settings."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, Any

from fastapi import Depends, Request

from ebr.errors import IndexNotReadyError
from ebr.search.searcher import Searcher
from service.settings import Settings


@dataclass
class ServiceState:
    settings: Settings
    searcher: Searcher | None = None
    encoder: Any = None  # ebr.io.encoder.TextEncoder when the index records one
    index_version: str = ""
    problems: list[str] = field(default_factory=list)  # why the service is not ready


def get_state(request: Request) -> ServiceState:
    state: ServiceState = request.app.state.ebr
    return state


def get_searcher(request: Request) -> Searcher:
    state = get_state(request)
    if state.searcher is None:
        raise IndexNotReadyError("no index is open: " + ("; ".join(state.problems) or "starting"))
    return state.searcher


StateDep = Annotated[ServiceState, Depends(get_state)]
SearcherDep = Annotated[Searcher, Depends(get_searcher)]
