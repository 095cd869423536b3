"""One lane per configured app: its upstream client, budget and proof, built from the
config at start and by a reload, and what an app whose credentials do not load gets.

Apart from :mod:`pushd.server` (the assembly of everything else) because a reload
builds lanes too and only needs this.
"""

from __future__ import annotations

import ssl
from collections.abc import Mapping
from typing import Any

from pushd.config import Config, apns_settings, fcm_settings
from pushd.lanes import Budget, Lane, Sender
from pushd.proof import Proof
from pushd.unusable import pause_unusable, unusable_sender
from pushd.upstream.apns.classify import mismatch_hint as apns_mismatch_hint
from pushd.upstream.apns.client import ApnsClient
from pushd.upstream.fcm.classify import mismatch_hint as fcm_mismatch_hint
from pushd.upstream.fcm.client import FcmClient


class StartupError(Exception):
    """What stops pushd from starting is the admin's to fix (a busy port, a key file
    that does not load): the message says what in one line, which ``pushd serve``
    prints instead of a traceback."""


def _reason(error: Exception) -> str:
    """``error`` in a few words: OpenSSL's reason, or the system's message and file."""
    if isinstance(error, ssl.SSLError):  # OpenSSL does not say which file
        return f"a certificate, key or CA file OpenSSL cannot use ({error.reason or 'not PEM'})"
    if isinstance(error, OSError) and error.strerror:
        return f"{error.filename}: {error.strerror}" if error.filename else error.strerror
    return str(error)


def build_lanes(config: Config, unusable: Mapping[str, str] | None = None) -> list[Lane]:
    """One lane per configured app, each with its own upstream client and budget.

    Raises StartupError for an app whose credentials or CA file do not load (the
    config checks load them too, but a file may change in between), unless ``unusable``
    is given (``serve``'s start: the apps whose credential files have a problem, by
    name): then each such app, and each whose client cannot be built, starts paused
    (:mod:`pushd.unusable`) and the others serve.
    """
    lanes = []
    for index, app in enumerate(config.apps):
        problem = None if unusable is None else unusable.get(app.name)
        if problem is None:
            try:
                lanes.append(build_lane(config, index))
                continue
            except StartupError as error:
                if unusable is None:
                    raise
                problem = str(error)
        lane = lane_for(config, index, unusable_sender(problem), hint="")
        lanes.append(pause_unusable(lane, config.retry.credential_pause))
    return lanes


def build_lane(config: Config, index: int) -> Lane:
    """The lane of ``config.apps[index]``; StartupError if its credentials do not load."""
    app = config.apps[index]
    sender: Sender[Any]
    try:
        if app.provider == "fcm":
            fcm = fcm_settings(app, config.upstream)
            sender = FcmClient(fcm)
            hint = fcm_mismatch_hint(fcm.project_id)
        else:
            settings = apns_settings(app, config.upstream)
            sender = ApnsClient(settings)
            hint = apns_mismatch_hint(app.environment, settings.topic)
    except (OSError, ValueError) as error:  # ssl.SSLError is an OSError
        raise StartupError(
            f"apps[{index}] ({app.name}): cannot load its credentials: {_reason(error)}"
        ) from None
    return lane_for(config, index, sender, hint)


def lane_for(config: Config, index: int, sender: Sender[Any], hint: str) -> Lane:
    """The lane of ``config.apps[index]`` around ``sender``; ``hint``: what to check
    when its tokens are refused en masse (:class:`~pushd.proof.Proof`)."""
    app = config.apps[index]
    return Lane(
        name=app.name,
        sender=sender,
        provider=app.provider,
        budget=Budget(app.concurrency),
        scope=config.removal_scope(app),
        request_timeout=app.request_timeout,
        proof=Proof(hint),
    )
