"""OAuth 2.0 access tokens for FCM: the JWT-bearer grant with an RS256 assertion.

A service account has no refresh token: to get an access token, pushd signs a short JWT
(the *assertion*) with the account's RSA key and posts it to the account's ``token_uri``
(protocol notes §2.1).  Google's tokens live about an hour.  :class:`AccessTokens`
keeps one per service account, shared by every send of the app, and replaces it a few
minutes before it expires.

Refreshing is **single-flight**: when the token needs replacing, the first caller asks
the token endpoint and every other caller either keeps using the still-valid old token
or, if there is none, waits for that one request.  A thousand sends at the hour's turn
therefore cost one token request, not a thousand.

A token endpoint that is down must delay sends, not crash or hammer: a failed refresh
raises :class:`TokenUnavailable` (which the client turns into ``RetryLater``) and is
remembered for a growing backoff, during which callers fail at once without a request.
Once a refresh has failed, the next one (after the backoff) holds a send for at most
:data:`RETRY_WAIT`; then it hears the last failure.

Given a nursery (the FCM client always gives its own), a refresh runs there rather than
in the task of the send that wanted it, so it ends only by the token endpoint's answer
or :data:`TOKEN_REQUEST_TIMEOUT`, never by that send's deadline.  Run in the sender's
task, an endpoint that accepted the connection and never answered had every refresh
cancelled by the send's deadline (10 s, like the token timeout) before its own timeout
could record a failure: no backoff ever started, and every push of the app held its
caller for the whole first-attempt deadline.
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import math
import re
import time
from collections.abc import Callable
from typing import Final

import httpx
import trio
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from pushd import jsonutil
from pushd.upstream.fcm.service_account import load_private_key
from pushd.upstream.fcm.settings import OAUTH_SCOPE, ServiceAccount

log = logging.getLogger("pushd.upstream.fcm")

#: The OAuth grant type of a signed-JWT token request (RFC 7523).
JWT_BEARER_GRANT: Final = "urn:ietf:params:oauth:grant-type:jwt-bearer"
#: Lifetime we ask for in the assertion; Google refuses ``exp - iat`` above an hour.
ASSERTION_LIFETIME: Final = 3600
#: Replace the access token when it expires within this many seconds.  Five minutes
#: leave room for clock skew and for a slow token endpoint, while the old token keeps
#: serving sends.  Shortened to half the lifetime for tokens that live less than that.
REFRESH_MARGIN: Final = 300.0
#: A token this close to expiry is not used at all: a request could arrive after it.
EXPIRY_SLACK: Final = 30.0
#: Lifetime assumed when the token endpoint omits ``expires_in``.
DEFAULT_LIFETIME: Final = 3600.0
#: How long one token request may take, connect to last byte.
TOKEN_REQUEST_TIMEOUT: Final = 10.0
#: The most of a token endpoint's answer that is read (decoded).  Google's is a few
#: hundred bytes; read whole, an endpoint (or a proxy in its place) that streamed without
#: end grew pushd's memory by about 30 MiB a second until the token timeout, again at
#: every try, for every app alike.
MAX_ANSWER_BYTES: Final = 64 * 1024
#: After a failed refresh, how long a send waits for the next try before it hears the
#: last failure: a recovered endpoint answers well within it, one that still hangs holds
#: each send this long at most (not the whole token timeout).
RETRY_WAIT: Final = 1.0
#: After a failed refresh, callers fail fast for BASE * 2**(n-1) seconds, capped: long
#: enough not to hammer a dead endpoint, short enough that recovery is noticed quickly.
FAILURE_BACKOFF_BASE: Final = 1.0
FAILURE_BACKOFF_MAX: Final = 30.0
#: OAuth error codes (RFC 6749 §5.2) that mean the credentials themselves are refused:
#: retrying cannot help until someone fixes the key or the clock, so the app pauses.
CREDENTIAL_ERRORS: Final = frozenset(
    {"invalid_grant", "invalid_client", "unauthorized_client", "invalid_scope", "access_denied"}
)
#: Characters an access token may contain; it goes into an HTTP header verbatim.
_ACCESS_TOKEN_RE: Final = re.compile(r"[\x21-\x7e]+")


class TokenUnavailable(Exception):
    """No access token can be had now.

    ``retry_after`` says when asking again makes sense; ``credential`` is true when the
    token endpoint refused the account itself (``invalid_grant`` and friends) rather than
    failing, so the client reports a credential failure instead of retrying.
    """

    def __init__(self, reason: str, *, retry_after: float | None = None, credential: bool = False):
        super().__init__(reason)
        self.reason = reason
        self.retry_after = retry_after
        self.credential = credential


def _b64url(data: bytes) -> bytes:
    return base64.urlsafe_b64encode(data).rstrip(b"=")


def make_assertion(
    key: rsa.RSAPrivateKey, account: ServiceAccount, issued_at: int, *, scope: str = OAUTH_SCOPE
) -> str:
    """Sign the JWT-bearer assertion for ``account``, valid for an hour from ``issued_at``.

    Header ``{"alg":"RS256","typ":"JWT","kid":private_key_id}`` (the ``kid`` lets Google
    pick the right public key of an account with several); claims ``iss`` (the account's
    email), ``scope``, ``aud`` (the ``token_uri`` it is posted to), ``iat`` and ``exp``.
    """
    header = {"alg": "RS256", "typ": "JWT", "kid": account.private_key_id}
    claims = {
        "iss": account.client_email,
        "scope": scope,
        "aud": account.token_uri,
        "iat": issued_at,
        "exp": issued_at + ASSERTION_LIFETIME,
    }
    signing_input = (
        _b64url(json.dumps(header, separators=(",", ":")).encode())
        + b"."
        + _b64url(json.dumps(claims, separators=(",", ":")).encode())
    )
    signature = key.sign(signing_input, padding.PKCS1v15(), hashes.SHA256())
    return (signing_input + b"." + _b64url(signature)).decode("ascii")


def parse_token_response(status: int, body: bytes) -> tuple[str, float]:
    """``(access_token, lifetime seconds)`` from the token endpoint's answer.

    Raises :class:`TokenUnavailable` for anything else, with the OAuth ``error`` code
    (never the body: an error page could echo the assertion).  Pure, for tests.
    """
    try:
        data = jsonutil.loads(body) if body else None
    except (ValueError, UnicodeDecodeError, RecursionError):
        data = None
    if not isinstance(data, dict):
        data = {}
    if status != 200:
        error = data.get("error")
        code = error if isinstance(error, str) and len(error) <= 64 else None
        reason = f"token endpoint: HTTP {status}" + (f" {code}" if code else "")
        credential = code in CREDENTIAL_ERRORS and 400 <= status < 500
        raise TokenUnavailable(reason, credential=credential)
    token = data.get("access_token")
    if not isinstance(token, str) or _ACCESS_TOKEN_RE.fullmatch(token) is None:
        raise TokenUnavailable("token endpoint: no usable access_token in the answer")
    lifetime = data.get("expires_in", DEFAULT_LIFETIME)
    if isinstance(lifetime, str):  # some servers send it as a string
        try:
            lifetime = float(lifetime)
        except ValueError:
            lifetime = None
    if (
        isinstance(lifetime, bool)
        or not isinstance(lifetime, int | float)
        or not 0 < lifetime < math.inf
    ):
        raise TokenUnavailable("token endpoint: expires_in is not a positive number")
    return token, float(lifetime)


def failure_backoff(failures: int) -> float:
    """Seconds to fail fast after ``failures`` consecutive failed refreshes (>= 1)."""
    return min(FAILURE_BACKOFF_MAX, FAILURE_BACKOFF_BASE * 2.0 ** min(failures - 1, 30))


class AccessTokens:
    """The current access token of one service account, refreshed single-flight.

    ``http`` is the client token requests go through (HTTP/1.1 is plenty: one request an
    hour); the caller owns and closes it.  ``nursery``: where refreshes run, so that no
    caller's deadline cuts one short (see the module docstring).  ``clock`` is wall-clock
    seconds: it stamps the assertion's ``iat``, and token expiry is measured with it too,
    so a test can move it.  Backoff after failures is measured on trio's clock.
    """

    def __init__(
        self,
        account: ServiceAccount,
        http: httpx.AsyncClient,
        *,
        clock: Callable[[], float] = time.time,
        timeout: float = TOKEN_REQUEST_TIMEOUT,
        nursery: trio.Nursery | None = None,
    ) -> None:
        self._account = account
        #: Where refreshes run (module docstring); None runs them in the caller's task.
        self._nursery = nursery
        self._key = load_private_key(account.private_key_pem)
        self._http = http
        self._clock = clock
        self._timeout = timeout
        self._token: str | None = None
        #: Clock time the token stops working, and when to start replacing it.
        self._expires_at = 0.0
        self._refresh_at = 0.0
        #: Set while a refresh is in flight; callers without a usable token wait on it.
        self._refreshing: trio.Event | None = None
        #: The last failure and until when (trio clock) it is repeated without asking.
        self._failure: TokenUnavailable | None = None
        self._failed_until = 0.0
        self._failures = 0
        #: Token requests made (successful or not), for tests and metrics.
        self.requests = 0

    @property
    def current(self) -> str | None:
        """The token now held (possibly stale), or None."""
        return self._token

    def _usable(self, now: float) -> bool:
        return self._token is not None and now < self._expires_at - EXPIRY_SLACK

    async def get(self) -> str:
        """An access token to send with, refreshed first if it is about to expire.

        Raises :class:`TokenUnavailable` when none can be had: the endpoint failed now or
        recently (see the module docstring).  A still-usable old token is returned rather
        than raising, so a brief token-endpoint outage near expiry costs nothing.
        """
        while True:
            now = self._clock()
            token = self._token
            if token is not None and now < self._refresh_at:
                return token
            if self._refreshing is not None:
                if token is not None and self._usable(now):
                    return token
                if self._failure is None:
                    await self._refreshing.wait()
                    continue
                # The endpoint failed last time: wait briefly for this try, which may
                # well hang the same way, then hear the last failure.
                with trio.move_on_after(RETRY_WAIT):
                    await self._refreshing.wait()
                    continue
                raise self._last_failure()
            if self._failure is not None and trio.current_time() < self._failed_until:
                if token is not None and self._usable(now):
                    return token
                raise self._last_failure()
            event = self._refreshing = trio.Event()
            if self._nursery is None:
                return await self._refresh(now, event)
            self._nursery.start_soon(self._refresh_aside, now, event)

    def _last_failure(self) -> TokenUnavailable:
        """The last failed refresh's error, for a caller who fails fast meanwhile."""
        failure = self._failure
        assert failure is not None
        return TokenUnavailable(
            failure.reason,
            retry_after=max(self._failed_until - trio.current_time(), 0.0) or None,
            credential=failure.credential,
        )

    def invalidate(self, seen_token: str) -> None:
        """FCM answered 401 to ``seen_token``: forget it, if it is still the current one.

        Many requests in flight see the same rejection; only the first report finds the
        token current, so a burst of 401s causes one refresh.
        """
        if seen_token == self._token:
            self._token = None
            self._expires_at = self._refresh_at = 0.0

    async def _refresh_aside(self, now: float, event: trio.Event) -> None:
        """:meth:`_refresh` in the nursery: its outcome is left for the callers to read.

        Nothing may escape into the nursery (the FCM client's): an unexpected error is
        recorded as a failed refresh like any other, named by its type only.
        """
        # Recorded by _refresh: callers read it from self._failure.
        with contextlib.suppress(TokenUnavailable):
            await self._refresh(now, event)

    async def _refresh(self, now: float, event: trio.Event) -> str:
        try:
            try:
                token, lifetime = await self._request(now)
            except Exception as exc:
                failure = (
                    exc
                    if isinstance(exc, TokenUnavailable)
                    else TokenUnavailable(f"token endpoint: {type(exc).__name__}")
                )
                self._failures += 1
                backoff = failure_backoff(self._failures)
                self._failure = failure
                self._failed_until = trio.current_time() + backoff
                log.warning(
                    "fcm: no access token for %s: %s; next try in %.0f s, sends fail "
                    "at once until one succeeds",
                    self._account.client_email,
                    failure.reason,
                    backoff,
                )
                if self._usable(self._clock()) and self._token is not None:
                    return self._token
                failure.retry_after = backoff
                raise failure from None
            self._failure = None
            self._failures = 0
            self._token = token
            self._expires_at = now + lifetime
            self._refresh_at = now + max(lifetime - REFRESH_MARGIN, lifetime / 2)
            return token
        finally:
            self._refreshing = None
            event.set()

    async def _request(self, now: float) -> tuple[str, float]:
        account = self._account
        assertion = make_assertion(self._key, account, int(now))
        self.requests += 1
        body = bytearray()
        try:
            with trio.fail_after(self._timeout):
                async with self._http.stream(
                    "POST",
                    account.token_uri,
                    data={"grant_type": JWT_BEARER_GRANT, "assertion": assertion},
                    headers={"accept": "application/json"},
                    timeout=self._timeout,
                ) as response:
                    async for chunk in response.aiter_bytes():
                        body += chunk
                        if len(body) > MAX_ANSWER_BYTES:
                            raise TokenUnavailable(
                                f"token endpoint: answer over {MAX_ANSWER_BYTES} bytes"
                            )
                    status = response.status_code
        except (trio.TooSlowError, httpx.TimeoutException):
            raise TokenUnavailable("token endpoint: timeout") from None
        except httpx.HTTPError as exc:
            raise TokenUnavailable(f"token endpoint: {type(exc).__name__}") from None
        return parse_token_response(status, bytes(body))
