"""``/api/v1/session``: exchange a token for a dashboard session cookie, see who you are, sign out."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request, Response
from pydantic import BaseModel, Field

from fleetwarden.api.auth import Principal, current_principal, end_session, start_session

router = APIRouter(tags=["session"])


class SessionRequest(BaseModel):
    token: str = Field(min_length=1, max_length=200, description="an operator token (fwt_...)")


@router.post("/session")
def create_session(body: SessionRequest, request: Request, response: Response) -> dict:
    """Sign in: sets the HttpOnly session cookie and the CSRF cookie; returns the CSRF token."""
    return start_session(request, response, body.token)


@router.get("/session")
def whoami(principal: Principal = Depends(current_principal)) -> dict:
    return {"user": principal.name, "role": principal.role, "via": principal.via}


@router.delete("/session")
def delete_session(request: Request, response: Response, principal: Principal = Depends(current_principal)) -> dict:
    end_session(request, response)
    return {"signed_out": principal.name}
