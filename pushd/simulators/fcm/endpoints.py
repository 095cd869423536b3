"""The token endpoint and the send endpoint (see the package doc)."""

from __future__ import annotations

import collections
import hashlib
import math
import secrets
import time
from collections.abc import Callable, Mapping
from urllib.parse import parse_qsl

import attrs
import trio

from pushd.simulators.fcm.answers import (
    Answer,
    dumps,
    error_info,
    google_error_body,
    json_answer,
    oauth_error,
)
from pushd.simulators.fcm.constants import (
    FCM_ERROR_CODES,
    GRANT_SWEEP_THRESHOLD,
    JWT_BEARER_GRANT,
    MAX_REQUEST_BODY,
    MISSING_CREDENTIAL_MESSAGE,
    OAUTH_ERRORS,
    QUOTA_FAILURE_TYPE,
    TOKEN_PATH,
    UNAUTHENTICATED_MESSAGE,
)
from pushd.simulators.fcm.oauth import Account, Grant, check_assertion
from pushd.simulators.fcm.validation import Checked, bad_request, check_send_body, fcm_error
from pushd.simulators.fcm.values import FcmReceived, FcmReply
from pushd.simulators.recording import Recording
from pushd.simulators.script import ReplyScript


@attrs.define
class Bucket:
    """A token bucket: ``capacity`` requests, refilled continuously over a minute.

    FCM's windows are not aligned to the clock, so a continuous refill is the closest
    simple model; it starts full.
    """

    capacity: float
    rate: float
    tokens: float
    #: Set on first use, so a quota can be configured before trio runs.
    updated: float | None = None

    def refill(self, now: float) -> None:
        if self.updated is not None:
            self.tokens = min(self.capacity, self.tokens + (now - self.updated) * self.rate)
        self.updated = now

    def retry_after(self) -> int:
        """Whole seconds until one request fits (at least 1, as Google says)."""
        return max(1, math.ceil((1.0 - self.tokens) / self.rate))


class Endpoints(Recording[FcmReceived]):
    """The two endpoints of :class:`~pushd.simulators.fcm.FcmSimulator`: Google's token
    endpoint and FCM's ``messages:send``, each deciding an :class:`Answer` from a request.

    A base class rather than a helper object so that the simulator's settings stay plain
    attributes a test can change at any time; :class:`FcmSimulator` sets every one of
    them in its ``__init__``.
    """

    token_lifetime: int
    accept_any_assertion: bool
    token_endpoint_down: bool
    log: Callable[[str], None] | None
    token_requests: int
    tokens_issued: int
    quota_rejections: int
    port: int | None
    _token_url: str | None
    _host: str
    _accounts: dict[str, Account]
    _grants: dict[str, Grant]
    _epoch: int
    _replies: ReplyScript[FcmReply]
    _token_scripts: collections.deque[FcmReply]
    _quotas: dict[str, Bucket]
    _last_message_us: int
    _project_suffix: dict[str, str]

    @property
    def token_url(self) -> str:
        """The ``aud`` assertions must carry, and a service account's ``token_uri``."""
        if self._token_url is not None:
            return self._token_url
        if self.port is None:
            raise RuntimeError("token_url is known once serve() has bound a port")
        return self.base_url + TOKEN_PATH

    @property
    def base_url(self) -> str:
        """``https://host:port`` of the send endpoint: an FCM app's ``upstream_url``.

        ``upstream_url`` moves only the send endpoint; access tokens come from the
        service account's ``token_uri``, which must name :attr:`token_url` too.
        """
        if self.port is None:
            raise RuntimeError("base_url is known once serve() has bound a port")
        host = f"[{self._host}]" if ":" in self._host else self._host
        return f"https://{host}:{self.port}"

    def _log(self, message: str) -> None:
        if self.log is not None:
            self.log(message)

    # -- token endpoint --

    def _token_request(self, method: str, headers: Mapping[bytes, bytes], body: bytes) -> Answer:
        """A scripted reply if one is queued, else the checked grant; a scripted success
        still passes its ``delay`` on."""
        self.token_requests += 1
        if not self._token_scripts:
            return self._token_answer(method, headers, body)
        reply = self._token_scripts.popleft()
        if reply.action != "reply":
            return Answer(0, b"", reply=reply)
        if reply.is_success:
            return attrs.evolve(self._token_answer(method, headers, body), reply=reply)
        status = reply.resolved()[0]
        error = OAUTH_ERRORS.get(status, "server_error" if status >= 500 else "invalid_request")
        return oauth_error(status, error, reply.message or error, reply)

    def _token_answer(self, method: str, headers: Mapping[bytes, bytes], body: bytes) -> Answer:
        if self.token_endpoint_down:
            return oauth_error(
                503, "temporarily_unavailable", "The service is currently unavailable."
            )
        if method != "POST":
            return oauth_error(405, "invalid_request", "The token endpoint takes POST.")
        ctype = headers.get(b"content-type", b"").split(b";")[0].strip().lower()
        if ctype != b"application/x-www-form-urlencoded":
            return oauth_error(
                400, "invalid_request", "Content-Type must be application/x-www-form-urlencoded."
            )
        try:
            form = dict(parse_qsl(body.decode("utf-8"), keep_blank_values=True))
        except (UnicodeDecodeError, ValueError):
            return oauth_error(400, "invalid_request", "The body is not a valid form.")
        grant_type = form.get("grant_type")
        if not grant_type:
            return oauth_error(400, "invalid_request", "Missing required parameter: grant_type")
        if grant_type != JWT_BEARER_GRANT:
            return oauth_error(400, "unsupported_grant_type", f"Invalid grant_type: {grant_type}")
        assertion = form.get("assertion")
        if not assertion:
            return oauth_error(400, "invalid_request", "Missing required parameter: assertion")
        verdict = check_assertion(
            assertion,
            self._accounts,
            self.token_url,
            time.time(),
            verify_signature=not self.accept_any_assertion,
        )
        if verdict.error is not None:
            self._log(f"token request rejected: {verdict.error}: {verdict.description}")
            return oauth_error(400, verdict.error, verdict.description)
        account = self._accounts.get(verdict.client_email)
        now = trio.current_time()
        if len(self._grants) >= GRANT_SWEEP_THRESHOLD:
            self._grants = {
                k: g
                for k, g in self._grants.items()
                if g.expires_at > now and g.epoch == self._epoch
            }
        access_token = "ya29.sim." + secrets.token_urlsafe(32)
        self._grants[access_token] = Grant(
            verdict.client_email,
            account.projects if account is not None else None,
            now + self.token_lifetime,
            self._epoch,
        )
        self.tokens_issued += 1
        self._log(f"access token issued to {verdict.client_email}")
        document = {
            "access_token": access_token,
            "expires_in": self.token_lifetime,
            "token_type": "Bearer",
        }
        return json_answer(
            200,
            dumps(document),
            extra=((b"cache-control", b"no-cache, no-store, max-age=0, must-revalidate"),),
        )

    # -- send endpoint --

    def _send_request(self, project_id: str, headers: Mapping[bytes, bytes], body: bytes) -> Answer:
        checked = check_send_body(body) if len(body) <= MAX_REQUEST_BODY else None
        answer, counted = self._judge_send(project_id, headers, checked)
        bucket = self._quotas.get(project_id)
        unanswered = answer.reply.action != "reply"
        if counted and bucket is not None and (unanswered or not 200 <= answer.status < 429):
            bucket.tokens += 1.0  # only 2xx and 4xx other than 429 use the quota
        if unanswered:
            return answer
        received = FcmReceived(
            project_id=project_id,
            token=checked.token if checked is not None else None,
            message=checked.message if checked is not None else {},
            status=answer.status,
            error_code=answer.error_code,
            at=0.0,
            validate_only=checked.validate_only if checked is not None else False,
            size=checked.size if checked is not None else 0,
        )
        return attrs.evolve(answer, received=received)

    def _judge_send(
        self,
        project_id: str,
        headers: Mapping[bytes, bytes],
        checked: Checked | None,
    ) -> tuple[Answer, bool]:
        """Decide the answer; the flag says whether the request took a quota token."""
        auth = headers.get(b"authorization")
        if auth is None or auth[:7].lower() != b"bearer " or not auth[7:].strip():
            return self._unauthenticated(MISSING_CREDENTIAL_MESSAGE, "CREDENTIALS_MISSING"), False
        access_token = auth[7:].strip().decode("latin-1")
        grant = self._grants.get(access_token)
        if grant is None:
            return self._unauthenticated(
                UNAUTHENTICATED_MESSAGE, "ACCESS_TOKEN_TYPE_UNSUPPORTED"
            ), False
        if grant.epoch != self._epoch or trio.current_time() >= grant.expires_at:
            return self._unauthenticated(UNAUTHENTICATED_MESSAGE, "ACCESS_TOKEN_EXPIRED"), False
        if grant.projects is not None and project_id not in grant.projects:
            text = (
                "Permission 'cloudmessaging.messages.create' denied on resource "
                f"'//cloudresourcemanager.googleapis.com/projects/{project_id}' "
                "(or it may not exist)."
            )
            body_bytes = google_error_body(
                403, "PERMISSION_DENIED", text, [error_info("IAM_PERMISSION_DENIED")]
            )
            return json_answer(403, body_bytes, error_code="PERMISSION_DENIED"), False

        bucket = self._quotas.get(project_id)
        if bucket is not None:
            bucket.refill(trio.current_time())
            if bucket.tokens < 1.0:
                self.quota_rejections += 1
                _, google, text = FCM_ERROR_CODES["QUOTA_EXCEEDED"]
                details = [
                    fcm_error("QUOTA_EXCEEDED"),
                    {
                        "@type": QUOTA_FAILURE_TYPE,
                        "violations": [{"subject": f"project:{project_id}", "description": text}],
                    },
                ]
                return (
                    json_answer(
                        429,
                        google_error_body(429, google, text, details),
                        retry_after=bucket.retry_after(),
                        error_code="QUOTA_EXCEEDED",
                    ),
                    False,
                )
            bucket.tokens -= 1.0

        if checked is None:
            text = f"Request payload size exceeds the limit: {MAX_REQUEST_BODY} bytes."
            return (
                json_answer(
                    400,
                    google_error_body(400, "INVALID_ARGUMENT", text, [bad_request(None, text)]),
                    error_code="INVALID_ARGUMENT",
                ),
                True,
            )
        if checked.rejection is not None:
            fault = checked.rejection
            return (
                json_answer(
                    400,
                    google_error_body(400, "INVALID_ARGUMENT", fault.message, fault.details),
                    error_code="INVALID_ARGUMENT",
                ),
                True,
            )

        target = checked.target or ""
        reply = self._replies.next(target)
        if reply.action != "reply":
            return Answer(0, b"", reply=reply), True
        if reply.status == 200 and reply.error_code is None:
            if checked.validate_only:
                name = f"projects/{project_id}/messages/fake_message_id"
            else:
                name = f"projects/{project_id}/messages/{self._message_id(project_id)}"
            return (
                json_answer(200, dumps({"name": name}), reply=reply),
                True,
            )
        status, code, google, text = reply.resolved()
        details = [fcm_error(code)] if code is not None else []
        return (
            json_answer(
                status,
                google_error_body(status, google, text, details),
                retry_after=reply.retry_after,
                reply=reply,
                error_code=code or google,
            ),
            True,
        )

    def _unauthenticated(self, text: str, reason: str) -> Answer:
        body = google_error_body(401, "UNAUTHENTICATED", text, [error_info(reason)])
        challenge = (
            (
                b"www-authenticate",
                b'Bearer realm="https://accounts.google.com/", error="invalid_token"',
            ),
        )
        return json_answer(401, body, extra=challenge, error_code="UNAUTHENTICATED")

    def _message_id(self, project_id: str) -> str:
        """``0:<microseconds>%<16 hex>``: FCM's shape, unique within this simulator."""
        now_us = max(time.time_ns() // 1000, self._last_message_us + 1)
        self._last_message_us = now_us
        suffix = self._project_suffix.get(project_id)
        if suffix is None:
            half = hashlib.sha256(project_id.encode()).hexdigest()[:8]
            suffix = self._project_suffix[project_id] = half + half
        return f"0:{now_us}%{suffix}"

    def _record(self, received: FcmReceived) -> None:
        """Note a send as answered; done just before the answer goes out, so a client
        that has its answer finds it recorded."""
        received = attrs.evolve(received, at=time.time())
        self._note(received)
