"""FastAPI authentication and authorization (architecture decision 10).

``Authenticator.principal`` authenticates the caller from ``Authorization: Bearer
<token>``; ``Authenticator.require(permission)`` also authorizes it::

    auth = Authenticator(tokens, clock)

    @app.get("/alerts")
    def alerts(who: Annotated[Principal, Depends(auth.require(Permission.READ_ALERTS))]):
        ...

A refused token is a 401 that says only whether a token was missing or not accepted,
never why (unknown, wrong secret, expired, revoked): that is logged without the token.

No ``from __future__ import annotations``: FastAPI reads dependencies from annotations
at run time, and ``require``'s closes over ``self``.
"""

import logging
from collections.abc import Callable
from datetime import datetime
from typing import Annotated

from fastapi import Depends, HTTPException, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from domain.access import Permission, Principal
from services.tokens import AuthenticationFailed, TokenMissing, TokenService

log = logging.getLogger(__name__)

#: The bearer scheme, as the OpenAPI document advertises it.
bearer = HTTPBearer(
    scheme_name="ToxWatchToken",
    bearerFormat="tw_<token_id>_<secret>",
    description="A ToxWatch API token, issued by an admin.",
    auto_error=False,
)

AUTHENTICATION_REQUIRED = "authentication required"
INVALID_TOKEN = "invalid or expired token"
FORBIDDEN = "forbidden"


class Authenticator:
    """The API's authentication and authorization dependencies."""

    def __init__(self, tokens: TokenService, clock: Callable[[], datetime]) -> None:
        self.tokens = tokens
        self.clock = clock

    def principal(
        self, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]
    ) -> Principal:
        """The caller, authenticated by its bearer token, or a 401."""
        token = credentials.credentials if credentials is not None else None
        try:
            return self.tokens.verify(token, self.clock())
        except AuthenticationFailed as failure:
            missing = isinstance(failure, TokenMissing)
            if not missing:
                log.info("token refused: %s", type(failure).__name__)
            raise HTTPException(
                status_code=status.HTTP_401_UNAUTHORIZED,
                detail=AUTHENTICATION_REQUIRED if missing else INVALID_TOKEN,
                headers={"WWW-Authenticate": "Bearer"},
            ) from None

    def require(self, permission: Permission) -> Callable[[Principal], Principal]:
        """A dependency: the authenticated caller if its role grants ``permission``,
        else a 403."""

        def authorized(principal: Annotated[Principal, Depends(self.principal)]) -> Principal:
            if not principal.can(permission):
                raise HTTPException(status_code=status.HTTP_403_FORBIDDEN, detail=FORBIDDEN)
            return principal

        return authorized
