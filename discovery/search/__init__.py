"""Search methods, one module each, registered by name in :mod:`discovery.search.base`.

Importing this package registers every method: ``greedy``, ``exhaustive``, ``layer-sweep``,
``cumulative-sweep``, ``topk``, ``threshold``, ``iterative-pruning`` (node level) and ``eap``, ``eap-ig``,
``acdc`` (edge level).
"""

from discovery.search import (  # noqa: E402,F401 - registers
    acdc,
    eap,
    exhaustive,
    greedy,
    iterative_pruning,
    patching_select,
    sweeps,
)
from discovery.search.base import METHODS, Param, SearchMethodSpec, SearchResult, get_method, register, run_search

__all__ = ["METHODS", "Param", "SearchMethodSpec", "SearchResult", "get_method", "register", "run_search"]
