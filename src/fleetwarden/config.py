"""Settings: where FleetWarden keeps its state and which database it talks to.

Precedence follows DESIGN.md's command-line contract: an explicit ``--db URL`` wins,
then ``FLEETWARDEN_DB``, then a SQLite file under ``FLEETWARDEN_HOME`` (default
``~/.local/share/fleetwarden``).  Everything else that is stateful (the CA, trained
models) lives under :func:`home` as well, so one variable moves a whole installation.
"""

from __future__ import annotations

import os
from pathlib import Path

DEFAULT_HOME = Path("~/.local/share/fleetwarden")
DB_FILENAME = "fleetwarden.db"


def home() -> Path:
    """FleetWarden's state directory (``FLEETWARDEN_HOME``), created on demand."""
    raw = os.environ.get("FLEETWARDEN_HOME", "").strip()
    path = Path(raw).expanduser() if raw else DEFAULT_HOME.expanduser()
    path.mkdir(parents=True, exist_ok=True)
    return path


def normalize_database_url(url: str) -> str:
    """Map the driver-less PostgreSQL spellings onto psycopg 3, the driver we ship.

    ``postgresql://`` and ``postgres://`` would otherwise make SQLAlchemy look for
    psycopg2, which is not installed; a plain file path becomes a SQLite URL.
    """
    url = url.strip()
    if not url:
        raise ValueError("empty database URL")
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    if "://" not in url:
        # `--db ./fleet.db` is friendlier than making people type sqlite:///
        return f"sqlite:///{Path(url).expanduser().resolve()}"
    return url


def database_url(explicit: str | None = None) -> str:
    """The database URL: ``explicit`` (``--db``) > ``FLEETWARDEN_DB`` > SQLite file in :func:`home`."""
    if explicit:
        return normalize_database_url(explicit)
    env = os.environ.get("FLEETWARDEN_DB", "").strip()
    if env:
        return normalize_database_url(env)
    return f"sqlite:///{home() / DB_FILENAME}"
