"""``fleetwarden users``: API operators (add, list, disable) and their browser sessions (sessions,
end-sessions).  A token is printed once, alone on the last line of ``users add``; only its SHA-256
is kept."""

from __future__ import annotations

import json
import sys
from typing import Annotated

import typer
from rich.text import Text

from fleetwarden.cli._common import AsJson, DbUrl, _run, out

users_app = typer.Typer(no_args_is_help=True, help="API users (operators) and their roles.")

Name = Annotated[str, typer.Argument(help="user name (1-100 letters, digits, '.', '_', '@', '-')")]


def _in_store(db: str | None, fn, *args, **kwargs):
    from fleetwarden.app.stores import store_at

    def work():
        with store_at(db) as store:
            return fn(store, *args, **kwargs)

    return _run(work)


@users_app.command("add")
def users_add(
    name: Name,
    role: Annotated[str, typer.Option("--role", help="admin, operator, analyst, viewer or service")],
    db: DbUrl = None,
) -> None:
    """Create an API user; prints its token alone on the last line (shown only this once)."""
    from fleetwarden.app.identity import add_user

    row, token = _in_store(db, add_user, name, role)
    out.print(Text(f"user {row['name']} ({row['role']}) created; its API token, shown only now:"))
    sys.stdout.flush()
    sys.stdout.write(token + "\n")
    sys.stdout.flush()


@users_app.command("list")
def users_list(db: DbUrl = None, as_json: AsJson = False) -> None:
    """List the API users (never their tokens)."""
    from fleetwarden.app.identity import list_users
    from fleetwarden.report import table_of, ts_text

    rows = _in_store(db, list_users)
    if as_json:
        sys.stdout.write(json.dumps(rows, indent=2, default=str) + "\n")
        return
    cells = [
        (
            r["name"],
            r["role"],
            ts_text(r["created_at"]),
            "yes" if r["disabled"] else "no",
            ts_text(r["last_used_at"]) if r["last_used_at"] else "never",
        )
        for r in rows
    ]
    out.print(table_of(("name", "role", "created", "disabled", "last used"), cells))


@users_app.command("disable")
def users_disable(name: Name, db: DbUrl = None) -> None:
    """Disable an API user: its token stops working at once."""
    from fleetwarden.app.identity import disable_user

    row = _in_store(db, disable_user, name)
    out.print(Text(f"user {row['name']} disabled"))


@users_app.command("sessions")
def users_sessions(
    user: Annotated[str | None, typer.Option("--user", help="only this user's sessions")] = None,
    include_closed: Annotated[
        bool, typer.Option("--all", help="also the expired and ended sessions still kept (a week)")
    ] = False,
    db: DbUrl = None,
    as_json: AsJson = False,
) -> None:
    """List the open console and API cookie sessions, newest first (never their secrets)."""
    from fleetwarden.app.operator_sessions import list_sessions
    from fleetwarden.report import table_of, ts_text

    rows = _in_store(db, list_sessions, user, include_closed=include_closed)
    if as_json:
        sys.stdout.write(json.dumps(rows, indent=2, default=str) + "\n")
        return
    cells = [
        (
            str(r["id"]),
            r["operator"],
            r["face"],
            ts_text(r["created_at"]),
            ts_text(r["last_seen_at"]) if r["last_seen_at"] else "-",
            ts_text(r["ended_at"]) if r["ended_at"] else f"expires {ts_text(r['expires_at'])}",
            r["source"] or "-",
            r["user_agent"] or "-",
        )
        for r in rows
    ]
    out.print(table_of(("id", "user", "face", "signed in", "last seen", "ends", "from", "user agent"), cells))


@users_app.command("end-sessions")
def users_end_sessions(name: Name, db: DbUrl = None) -> None:
    """End every open session of a user at once, in every server process (audited); its token
    still works: `users disable` for that."""
    from fleetwarden.app.operator_sessions import end_sessions

    count = _in_store(db, end_sessions, name)
    out.print(Text(f"{count} session(s) of {name} ended"))
