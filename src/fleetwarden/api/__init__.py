"""FleetWarden's REST API (FastAPI): :func:`create_app`, served by ``fleetwarden serve``."""

from fleetwarden.api.app import ApiSettings, close_app, create_app

__all__ = ["ApiSettings", "close_app", "create_app"]
