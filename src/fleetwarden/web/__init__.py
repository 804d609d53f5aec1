"""The web console: server-rendered pages over the app services, with htmx for the live parts
and uPlot for charts (both vendored under ``static/vendor``: no CDN).

:func:`mount` adds the console to a FastAPI app whose ``app.state.store`` holds the store: the
pages under ``/console``, the static files under ``/console/static``, and ``/`` redirecting to the
console.  :func:`create_console_app` is the API of :func:`fleetwarden.api.app.create_app` with the
console mounted (the console composes the API, not the other way round: ``api`` may not import
``web``, see docs/architecture.md).
"""

from __future__ import annotations

from typing import Any

from fleetwarden.web.pages import mount, router

__all__ = ["create_console_app", "mount", "router"]


def create_console_app(db_url: str | None = None, **settings: Any) -> Any:
    """The REST API over the store at ``db_url`` plus the console (one store, one process)."""
    from fleetwarden.api.app import create_app

    return mount(create_app(db_url, **settings))
