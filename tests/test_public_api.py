import ebr


def test_exported_members():
    assert sorted(ebr.__all__) == sorted([
        "BuildParams", "CorruptFileError", "EbrError", "IndexFormatError", "IndexNotReadyError",
        "IndexSpec", "InputError", "ManifestVersionError", "Metric", "OpenIndex",
        "SearchParamError", "SearchParams", "SearchResult", "SearchStats", "Searcher",
        "SpecError", "exact_search", "open_index", "write_index"])
    for name in ebr.__all__:
        assert getattr(ebr, name) is not None


def test_error_tree():
    assert issubclass(ebr.CorruptFileError, ebr.IndexFormatError)
    assert issubclass(ebr.ManifestVersionError, ebr.IndexFormatError)
    for cls in (ebr.SpecError, ebr.SearchParamError, ebr.InputError, ebr.IndexNotReadyError):
        assert issubclass(cls, ebr.EbrError)
