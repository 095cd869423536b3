"""``pushd simulate``'s fault options, turned into what each simulator should do.

An admin wants to watch pushd cope with what APNs and FCM really answer: a dead token
leaving their chat server, a 500 that is retried, a slow upstream, a server that sends
GOAWAY or vanishes.  The simulators can do all of that for tests
(:meth:`~pushd.simulators.apns.ApnsSimulator.script` and friends); this module gives
it a command-line form::

    --reply TOKEN=WHAT     WHAT is one of
                             STATUS            e.g. 500: that status, the provider's usual
                                               reason with it (APNs 410 Unregistered, FCM
                                               404 UNREGISTERED, ...)
                             STATUS:REASON     e.g. 410:Unregistered (APNs), 404:UNREGISTERED
                                               (FCM); the reason says which provider
                             REASON            e.g. BadDeviceToken, QUOTA_EXCEEDED: its usual
                                               status
                             goaway[:REASON]   GOAWAY on the connection, nothing answered
                             drop              reset the connection, nothing answered
                           TOKEN ``*`` means every token without a reply of its own.
                           Several replies for one token are used in order, and the
                           last one stays: ``T=500 T=200`` fails once, then delivers.
    --delay SECONDS        every answer waits this long
    --goaway-after N       a connection takes N requests, then answers GOAWAY Shutdown

APNs reasons are CamelCase and FCM error codes UPPER_CASE, so a reason names its
provider.  A reply without one (a bare status, ``goaway``, ``drop``) goes by the token:
64 or more hex digits is an APNs device token, anything else an FCM registration token;
for ``*`` it applies to both.
Each simulator answers in its own wire form: APNs' ``{"reason": ...}`` body (with the
``timestamp`` a 410 carries), FCM's ``google.rpc.Status`` with an ``FcmError`` detail.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import attrs

from pushd.model import mask_token, normalize_apns_token
from pushd.simulators.apns import REASON_STATUS, ApnsSimulator, SimReply
from pushd.simulators.fcm import FCM_ERROR_CODES, FcmReply, FcmSimulator

__all__ = ["ANY_TOKEN", "FaultError", "FaultPlan", "parse_plan", "parse_reply"]

#: The TOKEN of ``--reply`` that stands for every token without a reply of its own.
ANY_TOKEN = "*"
#: HTTP statuses a scripted reply may carry.
MIN_STATUS, MAX_STATUS = 200, 599


class FaultError(ValueError):
    """A fault option that cannot work; the message is for the user."""


@attrs.frozen
class Reply:
    """One ``--reply``: the token, and what each simulator answers (None: not its reply)."""

    token: str
    apns: SimReply | None
    fcm: FcmReply | None


@attrs.frozen
class FaultPlan:
    """Every fault option of one ``pushd simulate`` run, checked."""

    #: Replies per token, in the order given; the last one repeats.
    apns: Mapping[str, tuple[SimReply, ...]] = attrs.Factory(dict)
    fcm: Mapping[str, tuple[FcmReply, ...]] = attrs.Factory(dict)
    apns_default: SimReply | None = None
    fcm_default: FcmReply | None = None
    delay: float = 0.0
    goaway_after: int | None = None

    def describe(self) -> list[str]:
        """One line per fault, tokens masked, for the simulator's start-up message."""
        lines = []
        for provider, table, default in (
            ("APNs", self.apns, self.apns_default),
            ("FCM", self.fcm, self.fcm_default),
        ):
            for token, replies in table.items():
                shown = " then ".join(_show(reply) for reply in replies)
                lines.append(f"{provider} {mask_token(token)}: {shown} (last one repeats)")
            if default is not None:
                lines.append(f"{provider} every other token: {_show(default)}")
        if self.delay:
            lines.append(f"every answer waits {self.delay:g} s")
        if self.goaway_after is not None:
            lines.append(f"GOAWAY Shutdown after {self.goaway_after} requests per connection")
        return lines

    def apply(self, apns: ApnsSimulator, fcm: FcmSimulator | None) -> None:
        """Configure the simulators to follow the plan."""
        for token, replies in self.apns.items():
            apns.script(token, *replies[:-1])
            apns.set_token_reply(token, replies[-1])
        if self.apns_default is not None:
            apns.set_default(self.apns_default)
        apns.answer_delay = self.delay
        apns.goaway_after = self.goaway_after
        if fcm is None:
            return
        for token, fcm_replies in self.fcm.items():
            fcm.script(token, *fcm_replies[:-1])
            fcm.set_token_reply(token, fcm_replies[-1])
        if self.fcm_default is not None:
            fcm.set_default(self.fcm_default)
        fcm.answer_delay = self.delay
        fcm.goaway_after = self.goaway_after


def _show(reply: SimReply | FcmReply) -> str:
    if reply.action != "reply":
        return reply.action
    if isinstance(reply, SimReply):
        return f"{reply.status} {reply.reason}" if reply.reason else str(reply.status)
    status, code, _, _ = reply.resolved()
    return f"{status} {code}" if code else str(status)


def _status(text: str, spec: str) -> int:
    if not text.isdigit() or not MIN_STATUS <= int(text) <= MAX_STATUS:
        raise FaultError(f"--reply {spec}: {text!r} is not an HTTP status (200 to 599)")
    return int(text)


def parse_reply(spec: str) -> Reply:
    """Parse one ``TOKEN=WHAT`` (see the module docstring)."""
    token, sep, what = spec.partition("=")
    token = token.strip()
    if not sep or not token or not what:
        raise FaultError(f"--reply {spec}: expected TOKEN=WHAT, e.g. TOKEN=410:Unregistered")
    head, colon, reason = what.partition(":")
    if colon and not reason:
        raise FaultError(f"--reply {spec}: nothing after the colon")
    if head == "drop" and not colon:
        return Reply(token, SimReply(action="drop"), FcmReply(action="drop"))
    if head == "goaway":
        return Reply(
            token,
            SimReply(action="goaway", reason=reason or None),
            FcmReply(action="goaway", message=reason or None),
        )
    if head.isdigit():
        status = _status(head, spec)
        if not colon:
            return Reply(token, SimReply(status=status), FcmReply(status=status))
    elif colon:
        raise FaultError(f"--reply {spec}: {head!r} is not an HTTP status, goaway or drop")
    else:
        status, reason = 0, head
    if reason in REASON_STATUS:
        if status == 200:
            raise FaultError(f"--reply {spec}: a 200 carries no reason")
        return Reply(token, SimReply(status=status or REASON_STATUS[reason], reason=reason), None)
    if reason in FCM_ERROR_CODES:
        if status == 200:
            raise FaultError(f"--reply {spec}: a 200 carries no error code")
        return Reply(token, None, FcmReply(status=status or 200, error_code=reason))
    raise FaultError(
        f"--reply {spec}: {reason!r} is neither an APNs reason (Unregistered, "
        "BadDeviceToken, TooManyRequests, ...) nor an FCM error code (UNREGISTERED, "
        "INVALID_ARGUMENT, QUOTA_EXCEEDED, ...)"
    )


def parse_plan(
    replies: Sequence[str],
    *,
    delay: float = 0.0,
    goaway_after: int | None = None,
    fcm: bool = False,
) -> FaultPlan:
    """Check and gather every fault option; ``fcm`` says whether FCM is served at all."""
    if not delay >= 0 or delay == float("inf"):
        raise FaultError("--delay: seconds, 0 or more")
    if goaway_after is not None and goaway_after < 1:
        raise FaultError("--goaway-after: at least 1")
    apns: dict[str, list[SimReply]] = {}
    fcm_replies: dict[str, list[FcmReply]] = {}
    apns_default: SimReply | None = None
    fcm_default: FcmReply | None = None
    for spec in replies:
        reply = parse_reply(spec)
        if reply.apns is None and not fcm:
            raise FaultError(f"--reply {spec}: an FCM error code needs --fcm-port")
        if reply.token == ANY_TOKEN:
            if (reply.apns is not None and apns_default is not None) or (
                reply.fcm is not None and fcm_default is not None
            ):
                raise FaultError(f"--reply {spec}: {ANY_TOKEN} has a reply already")
            apns_default = reply.apns or apns_default
            fcm_default = reply.fcm or fcm_default
            continue
        # pushd sends APNs tokens in lower case; a reply for both goes where the
        # token's shape says it belongs.
        apns_token = normalize_apns_token(reply.token)
        if reply.apns is not None and reply.fcm is None and apns_token is None:
            raise FaultError(
                f"--reply {spec}: an APNs reason, but {mask_token(reply.token)!r} is "
                "not an APNs device token (64 or more hex digits)"
            )
        if reply.apns is not None and apns_token is not None:
            apns.setdefault(apns_token, []).append(reply.apns)
        elif reply.fcm is not None:
            if not fcm:
                raise FaultError(
                    f"--reply {spec}: not an APNs device token (64 or more hex digits), "
                    "and FCM is off (--fcm-port)"
                )
            fcm_replies.setdefault(reply.token, []).append(reply.fcm)
    return FaultPlan(
        apns={token: tuple(r) for token, r in apns.items()},
        fcm={token: tuple(r) for token, r in fcm_replies.items()},
        apns_default=apns_default,
        fcm_default=fcm_default,
        delay=delay,
        goaway_after=goaway_after,
    )
