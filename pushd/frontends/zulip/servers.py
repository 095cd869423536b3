"""The Zulip bouncer's endpoints about a registered server itself: analytics upload
and status, deactivate, transfer and billing (registering is :mod:`.registration`)."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from pushd import jsonutil
from pushd.frontends.http import Reply, Request, has_lone_surrogate
from pushd.frontends.zulip.wire import (
    ZulipError,
    bad_request,
    has_control,
    ignored,
    is_int64,
    is_uuid,
    parse_form,
    parse_json_body,
    success,
)
from pushd.store import Store, ZulipRealm, ZulipServer

#: The bouncer's handlers log under one name, as before they had modules of their own.
log = logging.getLogger("pushd.frontends.zulip.api")

#: The analytics upload (also sent by ``manage.py register_server``) carries up to
#: 10,000 rows per table: take what Django takes (DATA_UPLOAD_MAX_MEMORY_SIZE).
ANALYTICS_MAX_BODY = 25 * 1024 * 1024
#: A notify carries one encrypted payload per device of the user (E2EE: about 1 KB
#: each, base64): the server default of 64 KiB held about 60, and a 413 makes Zulip's
#: worker drop the notification.  Zulip's bouncer takes up to 25 MiB; 1 MiB holds
#: several hundred devices and keeps an unauthenticated body small.
NOTIFY_MAX_BODY = 1024 * 1024
#: What every realm is told: pushd has no plans and no billing.
REALM_PUSH_STATUS: Mapping[str, Any] = {"can_push": True, "expected_end_timestamp": None}
#: Analytics tables whose largest ``id`` the server asks for before uploading more.
ANALYTICS_TABLES = ("realm_counts", "installation_counts", "realmauditlog_rows")
_ANALYTICS_FIELDS = frozenset(
    {*ANALYTICS_TABLES, "realms", "version", "merge_base", "api_feature_level"}
)


def checked_realm(
    server: ZulipServer, realm_uuid: str, realm: ZulipRealm | None, path: str
) -> ZulipRealm | None:
    """Zulip's ``get_remote_realm_helper`` on the realm read for ``realm_uuid``: None if
    unknown (logged), 403 ``REMOTE_REALM_SERVER_MISMATCH_ERROR`` if another server's."""
    if realm is None:
        log.info(
            "%s: Received request for unknown realm %s, server %s", path, realm_uuid, server.uuid
        )
        return None
    if realm.server_uuid != server.uuid:
        log.warning(
            "%s: realm %s is registered to server %s, not %s",
            path,
            realm_uuid,
            realm.server_uuid,
            server.uuid,
        )
        raise ZulipError(
            403,
            "REMOTE_REALM_SERVER_MISMATCH_ERROR",
            "Your organization is registered to a different Zulip server. Please contact "
            "Zulip support for assistance in resolving this issue.",
        )
    return realm


class ServerHandlers:
    """A registered server's upkeep: analytics (how pushd learns its realms), and
    deactivating, transferring or billing its registration.

    Mounted by :class:`~pushd.frontends.zulip.api.ZulipBouncer`, which authenticates the
    server and rate-limits it first (but for ``transfer``, which needs no credentials).
    """

    def __init__(self, store: Store) -> None:
        self.store = store

    # --- server registration ------------------------------------------------------------

    async def server_deactivate(self, request: Request, server: ZulipServer) -> Reply:
        parse_json_body(request.body)
        await self.store.zulip_set_deactivated(server.uuid, True)
        log.info("Zulip server %s deactivated its registration", server.uuid)
        return success()

    async def transfer(self, request: Request) -> Reply:
        raise bad_request(
            "Registration transfer is not supported by this push notification service; "
            "ask its operator to move the registration."
        )

    async def billing(self, request: Request, server: ZulipServer) -> Reply:
        raise bad_request("This push notification service has no plans to manage.")

    # --- analytics ----------------------------------------------------------------------

    async def analytics_status(self, request: Request, server: ZulipServer) -> Reply:
        return success(
            last_realm_count_id=server.last_realm_count_id,
            last_installation_count_id=server.last_installation_count_id,
            last_realmauditlog_id=server.last_realmauditlog_id,
        )

    async def analytics(self, request: Request, server: ZulipServer) -> Reply:
        """Learn the server's realms; count rows only by their ids (the counts go)."""
        form = parse_form(request.body)
        marks = []
        for name in ANALYTICS_TABLES:
            rows = _json_list(form, name, required=name != "realmauditlog_rows")
            ids = [_row_id(row, name, index) for index, row in enumerate(rows)]
            marks.append(max(ids, default=0))
        realms = [_realm_info(row, index) for index, row in enumerate(_json_list(form, "realms"))]
        for realm in realms:
            known = await self.store.zulip_realm(realm.uuid)
            if known is not None and known.server_uuid != server.uuid:
                log.warning(
                    "Zulip server %s sent realm %s of server %s",
                    server.uuid,
                    realm.uuid,
                    known.server_uuid,
                )
                raise bad_request("Duplicate registration detected.")
        realms = [ZulipRealm(r.uuid, server.uuid, r.host, r.name) for r in realms]
        await self.store.zulip_record_analytics(server.uuid, realms, (marks[0], marks[1], marks[2]))
        return success(
            realms={realm.uuid: dict(REALM_PUSH_STATUS) for realm in realms},
            **ignored(form, _ANALYTICS_FIELDS),
        )


def _row_id(row: Any, name: str, index: int) -> int:
    """A row's ``id``: the largest is stored as the table's high-water mark (64 bits)."""
    value = row.get("id") if isinstance(row, dict) else None
    if not is_int64(value):
        raise bad_request(f'Invalid {name}[{index}]["id"]')
    return value


def _realm_info(row: Any, index: int) -> ZulipRealm:
    if not isinstance(row, dict):
        raise bad_request(f"Invalid realms[{index}]")
    # Servers from before realm names were uploaded send none: Zulip's bouncer reads
    # that as "" (RealmDataForAnalytics.name), so a missing name is no error here.
    values = {"name": ""}
    for key in ("uuid", "host", "name"):
        value = row.get(key, values.get(key))
        if not isinstance(value, str):
            raise bad_request(f'Invalid realms[{index}]["{key}"]')
        values[key] = value
    if not is_uuid(values["uuid"]):
        raise bad_request(f'Invalid realms[{index}]["uuid"]')
    if has_control(values["host"]):  # a subdomain of the server's host: none in it
        raise bad_request(f'Invalid realms[{index}]["host"]')
    # A name is the realm's admins' text; only NUL is refused, which PostgreSQL (pushd's
    # store and Zulip's own database) cannot hold, so no real server sends one: a 4xx
    # on analytics turns pushes off for every realm of the server.
    if "\x00" in values["name"]:
        raise bad_request(f'Invalid realms[{index}]["name"]')
    return ZulipRealm(values["uuid"].lower(), "", values["host"], values["name"])


def _json_list(form: Mapping[str, str], name: str, *, required: bool = False) -> list[Any]:
    """A form field holding a JSON list.  Checked for lone surrogates as JSON bodies are
    (:func:`~pushd.frontends.zulip.wire.parse_json_body`): the escape ``"\\ud800"``
    decodes to a string no UTF-8 encoder, the store's included, can take."""
    raw = form.get(name)
    if raw is None:
        if required:
            raise ZulipError(
                400, "REQUEST_VARIABLE_MISSING", f"Missing '{name}' argument", {"var_name": name}
            )
        return []
    try:
        value = jsonutil.loads(raw)
    except (ValueError, RecursionError):
        raise bad_request(f"{name} is not valid JSON") from None
    if has_lone_surrogate(raw.encode(), value):
        raise bad_request(f"{name} is not valid JSON")
    if not isinstance(value, list):
        raise bad_request(f"{name} is not a list")
    return value
