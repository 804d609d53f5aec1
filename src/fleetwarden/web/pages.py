"""The console's routes: one function per page, each calling ONE read service of
:mod:`fleetwarden.app.console` and rendering a template (Jinja2, autoescape on, every value also
passed through :func:`fleetwarden.core.text.printable` so control and bidi characters show as
escapes).  Roles are dependencies on the routes (:mod:`fleetwarden.web.auth`); a decision on an
action (approve, deny, execute, rollback) needs the operator or admin role and the session's CSRF
token.
"""

from __future__ import annotations

from datetime import UTC, datetime
from importlib import resources
from typing import Annotated, Any
from urllib.parse import quote

from fastapi import APIRouter, Depends, FastAPI, Form, Path, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from jinja2 import Environment, FileSystemLoader, select_autoescape
from markupsafe import Markup

from fleetwarden.api.auth import client_details
from fleetwarden.app import console, operator_sessions
from fleetwarden.core.errors import InputError
from fleetwarden.core.text import printable
from fleetwarden.web.auth import (
    COOKIE,
    DECIDERS,
    FACE,
    ConsoleSession,
    LoginRequired,
    RoleRefused,
    check_csrf,
    current_session,
    require_role,
    session_of,
)

__all__ = ["PREFIX", "mount", "router"]

PREFIX = "/console"
POLL = "every 5s"  # how often the live parts (badge, newest incidents, inbox) refresh
_HERE = resources.files("fleetwarden.web")

router = APIRouter(prefix=PREFIX, include_in_schema=False)
Session = Annotated[ConsoleSession, Depends(current_session)]
Decider = Annotated[ConsoleSession, Depends(require_role(*DECIDERS))]
PageNo = Annotated[int, Query(ge=1, le=1_000_000)]


# ---------------------------------------------------------------------------- templates


def _finalize(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, Markup) or not isinstance(value, str):
        return value
    return printable(value, 2000)


def _ts(value: Any) -> str:
    if value is None or value == "":
        return "–"
    try:
        return datetime.fromtimestamp(float(value), UTC).strftime("%Y-%m-%d %H:%M:%SZ")
    except (TypeError, ValueError, OverflowError, OSError):
        return "?"


def _environment() -> Environment:
    env = Environment(
        loader=FileSystemLoader(str(_HERE.joinpath("templates"))),
        autoescape=select_autoescape(default=True, default_for_string=True),
        finalize=_finalize,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["ts"] = _ts
    env.filters["pct"] = lambda v: "–" if v is None else f"{100 * float(v):.1f} %"
    env.filters["dur"] = lambda v: "–" if v is None else f"{float(v):.0f} s"
    env.filters["urlpart"] = lambda v: quote(str(v), safe="")
    env.globals.update(prefix=PREFIX, poll=POLL)
    return env


templates = Jinja2Templates(env=_environment())


def _page(
    request: Request, name: str, session: ConsoleSession | None, code: int = 200, **data: Any
) -> Response:
    ctx = {"session": session, "nav": name.split(".")[0], **data}
    return templates.TemplateResponse(request, name, ctx, status_code=code)


def _error(request: Request, session: ConsoleSession | None, exc: Exception) -> Response:
    text = str(exc)[:500]
    status = 404 if "unknown" in text.lower() else 400
    return _page(request, "error.html", session, code=status, message=text)


# ---------------------------------------------------------------------------- login


@router.get("/login", response_class=HTMLResponse)
def login_form(request: Request) -> Response:
    return _page(request, "login.html", None)


@router.post("/login")
def login(request: Request, token: Annotated[str, Form(max_length=500)] = "") -> Response:
    ttl_s = request.app.state.settings.session_ttl_s
    started = operator_sessions.sign_in(
        request.app.state.store, token.strip(), face=FACE, ttl_s=ttl_s, **client_details(request)
    )
    if started is None:
        return _page(request, "login.html", None, code=401, message="Unknown or disabled token.")
    response = RedirectResponse(f"{PREFIX}/", status_code=303)
    response.set_cookie(
        COOKIE, started.secret, httponly=True, samesite="strict", path=PREFIX,
        secure=request.url.scheme == "https", max_age=int(ttl_s),
    )  # fmt: skip
    return response


@router.post("/logout")
def logout(request: Request, session: Session, csrf: Annotated[str, Form(max_length=200)] = "") -> Response:
    check_csrf(session, csrf)
    operator_sessions.sign_out(request.app.state.store, request.cookies.get(COOKIE))
    response = RedirectResponse(f"{PREFIX}/login", status_code=303)
    response.delete_cookie(COOKIE, path=PREFIX)
    return response


# ---------------------------------------------------------------------------- pages


@router.get("/", response_class=HTMLResponse)
def overview(request: Request, session: Session) -> Response:
    return _page(request, "overview.html", session, data=console.overview(request.app.state.store))


@router.get("/devices", response_class=HTMLResponse)
def devices(
    request: Request,
    session: Session,
    page: PageNo = 1,
    q: Annotated[str | None, Query(max_length=200)] = None,
) -> Response:
    try:
        listing = console.devices_page(request.app.state.store, page=page, q=q)
    except InputError as exc:
        return _error(request, session, exc)
    return _page(request, "devices.html", session, listing=listing, q=q or "")


@router.get("/devices/{device_id:path}", response_class=HTMLResponse)
def device(request: Request, session: Session, device_id: str) -> Response:
    try:
        data = console.device_page(request.app.state.store, device_id)
    except InputError as exc:
        return _error(request, session, exc)
    return _page(request, "device.html", session, data=data)


@router.get("/incidents", response_class=HTMLResponse)
def incidents(
    request: Request, session: Session, page: PageNo = 1,
    status: Annotated[str, Query(pattern="^(open|acknowledged|closed|all)$")] = "open",
) -> Response:  # fmt: skip
    listing = console.incidents_page(
        request.app.state.store, page=page, status=None if status == "all" else status
    )
    return _page(request, "incidents.html", session, listing=listing, shown=status)


@router.get("/incidents/{incident_id}", response_class=HTMLResponse)
def incident(
    request: Request, session: Session, incident_id: Annotated[int, Path(ge=1, lt=2**62)]
) -> Response:
    try:
        data = console.incident_page(request.app.state.store, incident_id)
    except InputError as exc:
        return _error(request, session, exc)
    return _page(request, "incident.html", session, data=data)


@router.get("/approvals", response_class=HTMLResponse)
def approvals(request: Request, session: Session) -> Response:
    return _page(request, "approvals.html", session, groups=console.approvals(request.app.state.store))


@router.get("/metrics", response_class=HTMLResponse)
def metrics(request: Request, session: Session) -> Response:
    return _page(request, "metrics.html", session, data=console.metrics_page(request.app.state.store))


@router.get("/audit", response_class=HTMLResponse)
def audit(request: Request, session: Session, page: PageNo = 1) -> Response:
    return _page(request, "audit.html", session, data=console.audit_page(request.app.state.store, page=page))


# ---------------------------------------------------------------------------- live fragments (htmx)


@router.get("/live/badge", response_class=HTMLResponse)
def live_badge(request: Request, session: Session) -> Response:
    return _page(request, "_badge.html", session, counts=console.live_counts(request.app.state.store))


@router.get("/live/latest", response_class=HTMLResponse)
def live_latest(request: Request, session: Session) -> Response:
    return _page(request, "_latest.html", session, latest=console.latest_incidents(request.app.state.store))


@router.get("/live/approvals", response_class=HTMLResponse)
def live_approvals(request: Request, session: Session) -> Response:
    return _page(request, "_inbox.html", session, groups=console.approvals(request.app.state.store))


# ---------------------------------------------------------------------------- decisions


@router.post("/actions/{action_id}/{decision}")
def decide(
    request: Request, session: Decider, action_id: Annotated[int, Path(ge=1, lt=2**62)], decision: str,
    csrf: Annotated[str, Form(max_length=200)] = "", back: Annotated[str, Form(max_length=300)] = "",
) -> Response:  # fmt: skip
    check_csrf(session, csrf)
    try:
        console.decide_action(request.app.state.store, action_id, decision, actor=session.name)
    except InputError as exc:
        return _error(request, session, exc)
    target = (
        back
        if back.startswith(f"{PREFIX}/") and "//" not in back and "\\" not in back
        else f"{PREFIX}/approvals"
    )
    return RedirectResponse(target, status_code=303)


# ---------------------------------------------------------------------------- mounting


def _login_required(request: Request, _exc: Exception) -> Response:
    if request.method == "GET" and "hx-request" not in request.headers:
        return RedirectResponse(f"{PREFIX}/login", status_code=303)
    return Response("login required", status_code=401, media_type="text/plain")


def _refused(request: Request, exc: Exception) -> Response:
    return _page(request, "error.html", session_of(request), code=403, message=str(exc)[:300])


def _security_headers(app: FastAPI) -> None:
    @app.middleware("http")
    async def headers(request: Request, call_next: Any) -> Response:
        response = await call_next(request)
        if request.url.path.startswith(PREFIX):
            response.headers.setdefault(
                "Content-Security-Policy",
                "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
                "frame-ancestors 'none'; form-action 'self'; base-uri 'none'",
            )
            response.headers.setdefault("X-Content-Type-Options", "nosniff")
            response.headers.setdefault("Referrer-Policy", "same-origin")
        return response


def mount(app: FastAPI) -> FastAPI:
    """Add the console to ``app`` (which must hold ``app.state.store``): pages, static files,
    the login redirect and refusal pages, security headers, and ``/`` → ``/console/``."""
    app.include_router(router)
    app.mount(f"{PREFIX}/static", StaticFiles(directory=str(_HERE.joinpath("static"))), name="console-static")
    app.add_exception_handler(LoginRequired, _login_required)
    app.add_exception_handler(RoleRefused, _refused)
    _security_headers(app)

    @app.get("/", include_in_schema=False)
    def _root() -> RedirectResponse:
        return RedirectResponse(f"{PREFIX}/", status_code=307)

    return app
