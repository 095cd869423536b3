"""Who may read pushd's operational detail (``/healthz``, the status page's JSON).

App names, counters and queue sizes tell an outsider which apps a deployment serves
and how busy it is, so they are for the operator and the chat servers it serves: a
request carrying ``Authorization: Bearer <token>`` with the admin token
(``[server] admin_token_file``) or an active chat server's native API key.  Anyone may
still learn whether pushd is up, from an answer without detail.

One function decides it, :meth:`AdminAccess.authorized`, so every page with detail
grants the same access.
"""

from __future__ import annotations

import hmac

import attrs

from pushd.frontends.http import Reply, Request, json_reply
from pushd.store import Store

#: The challenge on a 401, as the native API sends it.
CHALLENGE = ("www-authenticate", 'Bearer realm="pushd"')


class AccessDenied(Exception):
    """A credential was sent and is wrong; becomes a 401 in the native API's shape."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def reply(self) -> Reply:
        error = {"code": "unauthorized", "message": self.message}
        return json_reply(401, {"error": error}, (CHALLENGE,))


@attrs.frozen
class Viewer:
    """Who passed :class:`AdminAccess`: the admin, or the native chat server named."""

    #: None for the admin token.
    server: str | None

    @property
    def admin(self) -> bool:
        return self.server is None


class AdminAccess:
    """Checks the credential of a request for operational detail."""

    def __init__(self, store: Store, admin_token: str | None) -> None:
        self.store = store
        self._admin_token = admin_token.encode() if admin_token else None

    async def authorized(self, request: Request) -> bool:
        """True for the admin token or an active server's key; False when the request
        sends no credential; :class:`AccessDenied` when it sends a wrong one (so a
        typo is told, not answered as if no credential had been sent)."""
        return await self.viewer(request) is not None

    async def viewer(self, request: Request) -> Viewer | None:
        """Who is asking, as :meth:`authorized` decides it: for pages that show the
        admin more than a chat server (which other servers use this pushd)."""
        header = request.headers.get("authorization")
        if header is None:
            return None
        scheme, _, credential = header.partition(" ")
        credential = credential.strip()
        if scheme.lower() != "bearer" or not credential:
            raise AccessDenied("send Authorization: Bearer <admin token or server key>")
        given = credential.encode("latin-1")
        if self._admin_token is not None and hmac.compare_digest(given, self._admin_token):
            return Viewer(server=None)
        server = await self.store.authenticate(credential)
        if server is None:
            raise AccessDenied("unknown admin token or server key")
        if not server.active:
            raise AccessDenied(f"server {server.name!r} is deactivated")
        return Viewer(server=server.name)
