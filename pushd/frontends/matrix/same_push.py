"""One push per request for the devices that would get the same one.

Synapse sends one notify per user with every pusher of theirs, and a user's pushers of
one app carry the same ``data`` (Element writes the same ``default_payload`` on every
device) and the same tweaks.  What pushd sends such devices is then identical but for
the token: built once, the push also reaches the upstream as one group (the dispatcher
groups deliveries by push object: one header template for APNs, one message for FCM).
Sygnal builds and encodes a payload for every device; doing it once per kind saves
about a third of what each further device of a request costs.

A push depends on the notification, the app (its provider, content mode and Matrix
options), the device's ``default_payload`` and, for APNs apps that take the sound from
the push rule, the device's ``tweaks.sound``; nothing else of the device is read by the
builders (:mod:`.payloads`, :mod:`.fcm_payloads`).  Two default payloads count as the
same only if they would encode to the same JSON (:func:`same_json`: ``1``, ``1.0`` and
``true`` are equal in Python, not on the wire).
"""

from __future__ import annotations

import math
from typing import Any, Final, Generic, TypeVar

import attrs

#: Kinds of push remembered per request: a request with more distinct ones builds the
#: rest per device, so a crafted request cannot make the lookup quadratic.
MAX_KINDS: Final = 8

App = TypeVar("App")
Built = TypeVar("Built")


def same_json(a: Any, b: Any) -> bool:
    """Whether two decoded JSON values encode to the same text (key order included).

    Stricter than ``==``, which takes ``1 == 1.0 == True`` and ``0.0 == -0.0``, and
    two objects with their keys in different orders, as equal.
    """
    kind = type(a)
    if kind is not type(b):
        return False
    if kind is dict:
        return len(a) == len(b) and all(
            ka == kb and same_json(va, vb)
            for (ka, va), (kb, vb) in zip(a.items(), b.items(), strict=True)
        )
    if kind is list:
        return len(a) == len(b) and all(map(same_json, a, b))
    if kind is float:
        return bool(a == b and math.copysign(1.0, a) == math.copysign(1.0, b))
    return bool(a == b)


@attrs.frozen
class _Kind(Generic[App, Built]):
    app: App
    default: dict[str, Any]
    sound: str | None
    built: Built


@attrs.define
class SamePush(Generic[App, Built]):
    """What was built for the devices of one request so far, by what it depends on."""

    kinds: list[_Kind[App, Built]] = attrs.Factory(list)

    def find(
        self, app: App, default: dict[str, Any], sound: str | None
    ) -> tuple[bool, Built | None]:
        """``(True, what was built)`` for a device whose push is one already built,
        else ``(False, None)``."""
        for kind in self.kinds:
            if kind.app is app and kind.sound == sound and same_json(kind.default, default):
                return True, kind.built
        return False, None

    def keep(self, app: App, default: dict[str, Any], sound: str | None, built: Built) -> None:
        """Remember ``built`` for the devices like this one (up to :data:`MAX_KINDS`)."""
        if len(self.kinds) < MAX_KINDS:
            self.kinds.append(_Kind(app, default, sound, built))
