"""The FastAPI application: :func:`create_app` builds one app over one store.

Layout: the API lives under ``/api/v1/`` (one router per resource in :mod:`fleetwarden.api.routers`),
the OpenAPI document at ``/openapi.json``, Prometheus text at ``/metrics``.  Other faces (the
dashboard) add their own routers to the returned app with ``app.include_router(...)``.

Errors: an :class:`~fleetwarden.core.errors.InputError` escaping a service becomes a 4xx JSON body
``{"detail": "..."}`` (404 when the message says an id is unknown, else 400); request validation
failures are 422 with pydantic's field list; authentication failures are 401 and role failures 403,
each with a JSON reason (see :mod:`fleetwarden.api.auth`).  Anything else is a 500 whose body names
no internals (the traceback goes to the server log, where secrets are never logged).

Event ingestion (``POST /api/v1/events``) runs through one long-lived detection session per app
(:class:`~fleetwarden.app.ingest.IngestSession`, ``app.state.ingestion``), so a device's state carries
from one batch to the next; its state is saved to the store every ``ingest_checkpoint_s`` seconds
and, with its pending findings flushed and recorded, at shutdown.

Blind spot: the app holds one store (one engine and its pool) for its whole life; it is closed by the
lifespan hook on shutdown, or by :func:`close_app` for apps built without a running server (both
close the ingestion session first).  Each server process holds its own ingestion session.
"""

from __future__ import annotations

import re
from contextlib import ExitStack, asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from fleetwarden.app.ingest import CHECKPOINT_EVERY, CONTEXT_EVERY, IngestSession
from fleetwarden.app.stores import store_at
from fleetwarden.core.errors import InputError

__all__ = ["ApiSettings", "close_app", "create_app"]

API_PREFIX = "/api/v1"


@dataclass(frozen=True)
class ApiSettings:
    """How the app behaves; everything has a safe default.

    ``secure_cookies``: None sets the session cookie's Secure flag when the request came over HTTPS;
    True/False forces it.  ``session_ttl_s``: the lifetime of a dashboard session (sessions live in
    the store, :mod:`fleetwarden.app.operator_sessions`: they survive restarts, need no key, and are
    shared by every process serving the same store).
    ``max_batch``: the largest number of events one ``POST /api/v1/events`` may carry.
    ``allowed_origins``: origins accepted for cookie-authenticated unsafe requests besides the
    request's own host.
    ``ingest_checkpoint_s``: wall seconds between saves of the ingestion session's engine state
    (and at shutdown).  ``ingest_context_s``: wall seconds between its reads of the inventory.
    ``ingest_model``: a flow-model directory the ingestion session scores flows with (``serve
    --model``; None: the analytics only).
    """

    secure_cookies: bool | None = None
    session_ttl_s: float = 8 * 3600.0
    max_batch: int = 5000
    allowed_origins: tuple[str, ...] = field(default_factory=tuple)
    ingest_checkpoint_s: float = CHECKPOINT_EVERY
    ingest_context_s: float = CONTEXT_EVERY
    ingest_model: str | None = None


def create_app(db_url: str | None = None, *, settings: ApiSettings | None = None, **overrides: Any) -> FastAPI:
    """The FleetWarden API over the store at ``db_url`` (None: ``FLEETWARDEN_DB``, else the SQLite
    file in ``FLEETWARDEN_HOME``), migrated on open.  ``overrides`` are :class:`ApiSettings` fields
    (``create_app(url, max_batch=100)``)."""
    settings = _settings(settings, overrides)
    model = None
    if settings.ingest_model is not None:  # refused before anything is served, naming the directory
        from fleetwarden.app.models import load_flow_model

        model = load_flow_model(settings.ingest_model)
    resources = ExitStack()
    store = resources.enter_context(store_at(db_url))
    ingestion = IngestSession(
        store, checkpoint_every=settings.ingest_checkpoint_s, context_every=settings.ingest_context_s,
        model=model,
    )
    resources.callback(ingestion.close)  # before the store closes (last in, first out)

    @asynccontextmanager
    async def lifespan(_app: FastAPI):  # pragma: no cover - exercised by the uvicorn tests
        yield
        resources.close()

    app = FastAPI(
        title="FleetWarden API",
        version="1",
        description="IoT fleet security: devices, incidents, graduated response, audit.",
        lifespan=lifespan,
    )
    app.state.store = store
    app.state.ingestion = ingestion
    app.state.settings = settings
    app.state.resources = resources
    _install_errors(app)
    _include_routers(app)
    return app


def close_app(app: FastAPI) -> None:
    """Close the ingestion session and the store of an app that ran without a lifespan (tests,
    scripts)."""
    app.state.resources.close()


def _settings(settings: ApiSettings | None, overrides: dict[str, Any]) -> ApiSettings:
    base = settings or ApiSettings()
    if not overrides:
        return base
    unknown = set(overrides) - set(ApiSettings.__dataclass_fields__)
    if unknown:
        raise TypeError(f"create_app: unknown settings {sorted(unknown)}")
    return ApiSettings(**{**base.__dict__, **overrides})


def _install_errors(app: FastAPI) -> None:
    @app.exception_handler(InputError)
    async def _input_error(_request: Request, exc: InputError) -> JSONResponse:
        text = str(exc)[:500]
        status = 404 if _is_not_found(text) else 400
        return JSONResponse({"detail": text}, status_code=status)


_NOT_FOUND = re.compile(r"\b(unknown|no such) (action|device|incident|rollout|enrolment|image|vendor|user|suppression)\b|not found")


def _is_not_found(text: str) -> bool:
    """A service's "unknown action 7" / "no such device 'x'" is a 404; other bad input a 400."""
    return _NOT_FOUND.search(text.lower()) is not None


def _include_routers(app: FastAPI) -> None:
    from fleetwarden.api.routers import ALL_ROUTERS, prometheus_router

    for router in ALL_ROUTERS:
        app.include_router(router, prefix=API_PREFIX)
    app.include_router(prometheus_router)
