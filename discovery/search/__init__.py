"""Search methods, one module each, registered by name in :mod:`discovery.search.base`."""

from discovery.search.base import (METHODS, Param, SearchMethodSpec, SearchResult, get_method, register,
                                   run_search)

__all__ = ["METHODS", "Param", "SearchMethodSpec", "SearchResult", "get_method", "register", "run_search"]
