"""Settings: where FleetWarden keeps its state and which database it talks to.

Precedence follows the command-line contract (docs/architecture.md): an explicit ``--db URL`` wins,
then ``FLEETWARDEN_DB``, then a SQLite file under ``FLEETWARDEN_HOME`` (default
``~/.local/share/fleetwarden``).  Everything else that is stateful (the CA, trained
models) lives under :func:`home` as well, so one variable moves a whole installation.
"""

from __future__ import annotations

import os
from pathlib import Path

from fleetwarden.core.errors import InputError

DEFAULT_HOME = Path("~/.local/share/fleetwarden")
DB_FILENAME = "fleetwarden.db"
SQLITE_SUFFIXES = (".db", ".sqlite", ".sqlite3")


def home() -> Path:
    """FleetWarden's state directory (``FLEETWARDEN_HOME``), created on demand."""
    raw = os.environ.get("FLEETWARDEN_HOME", "").strip()
    path = Path(raw).expanduser() if raw else DEFAULT_HOME.expanduser()
    path.mkdir(parents=True, exist_ok=True)
    return path


def normalize_database_url(url: str) -> str:
    """Map the driver-less PostgreSQL spellings onto psycopg 3, the driver we ship.

    ``postgresql://`` and ``postgres://`` would otherwise make SQLAlchemy look for
    psycopg2, which is not installed, and ``postgresql+psycopg2://`` is taken as psycopg 3 too.
    A plain file path becomes a SQLite URL when it looks like one (``.db``, ``.sqlite``,
    ``.sqlite3``, or an existing file): a typo such as ``--db nonsense`` is refused rather than
    silently creating a database file of that name.
    """
    url = url.strip()
    if not url:
        raise InputError("empty database URL")
    for prefix in ("postgresql://", "postgres://", "postgresql+psycopg2://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    if "://" not in url:
        path = Path(url).expanduser()
        if path.suffix.lower() not in SQLITE_SUFFIXES and not path.is_file():
            raise InputError(
                f"--db {url[:200]!r} is neither a database URL (sqlite:///PATH, postgresql://USER@HOST/DB) "
                f"nor a SQLite file ({', '.join(SQLITE_SUFFIXES)})"
            )
        # `--db ./fleet.db` is friendlier than making people type sqlite:///
        return f"sqlite:///{path.resolve()}"
    return url


def database_url(explicit: str | None = None) -> str:
    """The database URL: ``explicit`` (``--db``) > ``FLEETWARDEN_DB`` > SQLite file in :func:`home`."""
    if explicit:
        return normalize_database_url(explicit)
    env = os.environ.get("FLEETWARDEN_DB", "").strip()
    if env:
        return normalize_database_url(env)
    return f"sqlite:///{home() / DB_FILENAME}"
