"""A web dashboard over the store: jobs live, circuits as diagrams, comparisons across tasks.

``circuits dashboard`` serves it (uvicorn); :func:`create_app` builds the FastAPI app over a
:class:`~discovery.store.Store` opened by :func:`open_dashboard_store` (read-only by default: the
database itself refuses writes). Modules:

- :mod:`discovery.dashboard.queries`: every read of the store (the one file to touch if the store's
  interface changes), returning JSON-safe values the API serves as they are;
- :mod:`discovery.dashboard.svg`: inline SVG (circuit diagrams, score-against-size, heatmaps);
- :mod:`discovery.dashboard.app`: the routes, pages (``templates/``) and error handling.
"""

from discovery.dashboard.app import create_app
from discovery.dashboard.queries import open_dashboard_store

__all__ = ["create_app", "open_dashboard_store"]
