"""Seeded random mutations of Synapse-shaped notify bodies: the parser and the payload
builders either succeed or refuse with their own error, never anything else (which the
gateway would answer with a 500)."""

from __future__ import annotations

import copy
import json
import random
from typing import Any

from pushd.config import MatrixAppOptions
from pushd.frontends.matrix import payloads, wire
from tests import matrix_homeserver as hs
from tests.conftest import token

SEED = 20261122
ROUNDS = 3000
#: Values a mutation may put anywhere: every JSON type, odd sizes and characters.
ODD_VALUES: list[Any] = [
    None,
    True,
    0,
    -1,
    2**63,
    1.5,
    1e308,
    "",
    "é" * 3000,
    '\u2028"\\',
    "x" * 5000,
    [],
    [1, "a", None],
    {},
    {"msgtype": "m.image", "body": 5},
    {"aps": "not an object"},
    {"aps": {"alert": ["list"]}, "from": "reserved"},
    {"offer": {"sdp": "m=video"}},
]
OPTIONS = [
    MatrixAppOptions(app_ids=("a",)),
    MatrixAppOptions(app_ids=("a",), send_badge_counts=False, push_type="background"),
    MatrixAppOptions(app_ids=("a",), convert_pushkey_to_hex=False, sound_from_tweaks=True),
    MatrixAppOptions(app_ids=("a",), fcm_options={"android": {"ttl": "60s"}, "apns": {}}),
]


def _bodies() -> list[dict[str, Any]]:
    device = hs.device(hs.IOS_APP, hs.pushkey_for(token(1)), tweaks={"sound": "default"})
    return [
        hs.full_event([device], content={"msgtype": "m.text", "body": "hi"}),
        hs.event_id_only([hs.device(hs.IOS_APP, hs.pushkey_for(token(2)))]),
        hs.badge_update([hs.device(hs.IOS_APP, hs.pushkey_for(token(3)))]),
        hs.full_event(
            [hs.device(hs.ANDROID_APP, "fcm:token", default_payload={"cs": "x"})],
            type="m.room.member",
            membership="invite",
            user_is_target=True,
        ),
    ]


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    found = [prefix]
    if isinstance(value, dict):
        for key, inner in value.items():
            found += _paths(inner, (*prefix, key))
    elif isinstance(value, list):
        for index, inner in enumerate(value):
            found += _paths(inner, (*prefix, index))
    return found


def _mutate(body: dict[str, Any], rng: random.Random) -> dict[str, Any]:
    body = json.loads(json.dumps(body))
    for _ in range(rng.randint(1, 3)):
        paths = _paths(body)[1:]
        if not paths:  # everything deleted
            break
        path = rng.choice(paths)
        holder = body
        for step in path[:-1]:
            holder = holder[step]
        if isinstance(holder, dict) and rng.random() < 0.2:
            del holder[path[-1]]
        else:
            holder[path[-1]] = copy.deepcopy(rng.choice(ODD_VALUES))
    return body


def test_mutated_requests_are_served_or_refused_cleanly() -> None:
    rng = random.Random(SEED)
    parsed = refused = built = failed = 0
    bodies = _bodies()
    for _ in range(ROUNDS):
        raw = json.dumps(_mutate(rng.choice(bodies), rng), ensure_ascii=rng.random() < 0.5)
        try:
            notification = wire.parse_notify(raw.encode("utf-8", "surrogatepass"))
        except wire.BadRequest:
            refused += 1
            continue
        parsed += 1
        options = rng.choice(OPTIONS)
        for device in notification.devices:
            if payloads.default_payload(device) is None:
                continue
            payloads.apns_token(device.pushkey, options.convert_pushkey_to_hex)
            for build in (payloads.apns_push, payloads.fcm_push):
                try:
                    build(notification, device, options)
                    built += 1
                except payloads.PayloadError:
                    failed += 1
    # The mutations must exercise every branch of the outcome, or the test proves little.
    assert parsed > ROUNDS // 4 and refused > ROUNDS // 10
    assert built > ROUNDS // 4 and failed > 0
