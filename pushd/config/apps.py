"""``[[apps]]``: one mobile app each, its credentials and per-protocol options."""

from __future__ import annotations

from typing import Any, Literal

import attrs

from pushd.config.constants import DEFAULT_REDACTED_TEXT, ContentMode


@attrs.frozen
class FcmApnsDefaults:
    """``[apps.fcm_apns]``: the APNs block FCM forwards to iOS devices of an FCM app."""

    headers: dict[str, str] = attrs.Factory(dict)
    #: Members of ``aps`` added to every message, e.g. ``{"mutable-content" = 1}``.
    aps: dict[str, Any] = attrs.Factory(dict)


@attrs.frozen
class MatrixAppOptions:
    """``[apps.matrix]``: this app serves Matrix pushers whose ``app_id`` matches.

    The knobs are Sygnal's per-app options under pushd's names (protocol notes §4), so
    an app built against Sygnal gets the same payloads.
    """

    #: Exact app ids or globs (``*`` any run, ``?`` one character, case-sensitive).
    #: An exact match wins; a pushkey matched by globs of two apps is rejected.
    app_ids: tuple[str, ...] = ()
    #: APNs: pushkeys are the base64 of the device token (Element iOS, Element X iOS)
    #: and are sent as hex; false for apps that register the hex token itself.
    convert_pushkey_to_hex: bool = True
    #: Put ``counts`` into the push (APNs ``aps.badge``, FCM ``unread``); false for
    #: apps that count by themselves (counts are wrong with end-to-end encryption).
    send_badge_counts: bool = True
    #: APNs: ``apns-push-type`` (default ``alert``); ``background`` is sent at priority 5.
    push_type: str = "alert"
    #: APNs: map the push rule's ``tweaks.sound`` to ``aps.sound`` (Sygnal does not).
    sound_from_tweaks: bool = False
    #: FCM: the base of every v1 ``message`` (e.g. ``apns`` options for iOS through
    #: FCM, ``android.ttl``); ``data``, ``token`` and ``android.priority`` are pushd's.
    fcm_options: dict[str, Any] = attrs.Factory(dict)


@attrs.frozen
class AppConfig:
    """One ``[[apps]]`` entry: a mobile app and the credentials to push to it."""

    name: str
    provider: Literal["apns", "fcm"]
    #: APNs: the app's bundle id (APNs topic).
    topic: str | None = None
    #: APNs: which APNs environment the app's tokens belong to.
    environment: Literal["production", "sandbox"] = "production"
    # Token auth (preferred): a .p8 key with its key id and team id.
    key_file: str | None = None
    key_id: str | None = None
    team_id: str | None = None
    # Certificate auth: PEM (certificate and key) or PKCS#12, optional password file.
    cert_file: str | None = None
    cert_password_file: str | None = None
    # FCM: the Firebase service-account JSON file; project_id overrides the file's.
    service_account_file: str | None = None
    project_id: str | None = None
    #: FCM: Android delivery defaults (``android.priority``, ``ttl`` seconds, collapse key).
    android_priority: Literal["normal", "high"] = "high"
    android_ttl: int | None = None
    android_collapse_key: str | None = None
    fcm_apns: FcmApnsDefaults | None = None
    #: Mattermost: the platform type this app serves (the device id's prefix without
    #: ``-vN``: ``apple_rn``, ``android_rn``, ``apple_rnbeta``, ...).
    mattermost_type: str | None = None
    matrix: MatrixAppOptions | None = None
    #: What of a message this app's pushes carry, whatever the chat server sends:
    #: ``full`` (as sent), ``redacted`` (the text replaced by ``redacted_text``, names
    #: of senders and conversations dropped, ids kept for routing), ``id_only`` (only
    #: the ids the app needs to fetch the message itself).  Per protocol: README,
    #: "Privacy modes".  Zulip's end-to-end encrypted pushes are opaque and untouched.
    content: ContentMode = "full"
    redacted_text: str = DEFAULT_REDACTED_TEXT
    #: Override Apple's or Google's URL, e.g. the bundled simulator.  FCM: only the send
    #: endpoint moves; access tokens still come from the service account's ``token_uri``
    #: (not implied: a proxy or regional endpoint keeps Google's OAuth).
    upstream_url: str | None = None
    #: Extra CA bundle to trust for the upstream (the simulator's CA).
    upstream_ca_file: str | None = None
    connections: int = 1
    #: Notifications in flight at once for this app.
    concurrency: int = 1000
    request_timeout: float = 10.0
    #: This app's HTTP proxy instead of ``[upstream]``'s; ``""``: this app goes direct.
    proxy: str | None = attrs.field(default=None, repr=False)
    proxy_password_file: str | None = None
