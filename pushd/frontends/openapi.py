"""The OpenAPI 3.1 description of the native API, served at ``/v1/openapi.json``.

Kept by hand beside the handlers; ``tests/test_openapi.py`` checks that every route
is described and every described path is served, and runs schemathesis against a live
pushd: a body this document allows must be taken, one it forbids refused, so a client
generated from it never meets a surprise.  Deployment facts (which app names exist,
which provider an app uses) cannot be in one document for every deployment; the
descriptions say where they matter.
"""

from __future__ import annotations

from typing import Any

from pushd import __version__
from pushd.frontends.native import MAX_TOKENS_PER_SEND
from pushd.model import APNS_PRIORITIES, APNS_PUSH_TYPES
from pushd.upstream.apns.request import COLLAPSE_ID_LIMIT, PAYLOAD_LIMIT, VOIP_PAYLOAD_LIMIT
from pushd.upstream.fcm.message import MAX_TTL

_ERROR = {"$ref": "#/components/responses/Error"}
_AUTH_ERRORS = {"401": _ERROR, "403": _ERROR}
_RATE_LIMITED = {
    "description": "More than [native] rate_limit requests a minute from this server",
    "headers": {"Retry-After": {"description": "Seconds to wait", "schema": {"type": "integer"}}},
    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
}


def _body(schema: str) -> dict[str, Any]:
    return {
        "required": True,
        "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{schema}"}}},
    }


def _ok(schema: str, description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{schema}"}}},
    }


def _post(summary: str, body: str, responses: dict[str, Any]) -> dict[str, Any]:
    return {
        "post": {
            "summary": summary,
            "security": [{"serverKey": []}],
            "requestBody": _body(body),
            "responses": {
                **responses,
                "400": _ERROR,
                **_AUTH_ERRORS,
                "413": _ERROR,
                "429": _RATE_LIMITED,
            },
        }
    }


#: What ``native.check_token`` and ``_token_forms`` accept: an APNs token (hex, any case)
#: or an FCM registration token; every APNs token is also of the FCM form.
_TOKEN = {
    "type": "string",
    "pattern": "^[A-Za-z0-9_:.+/=-]{1,4096}$",
    "description": (
        "A device token: an APNs token (hex, 64 to 200 digits, any case; stored in lower "
        "case) or an FCM registration token. Registering checks it against the app's "
        "provider: an APNs app takes only ApnsToken."
    ),
}
_APNS_TOKEN = {
    "type": "string",
    "pattern": "^([0-9a-fA-F]{2}){32,100}$",
    "description": "An APNs device token: an even number of hex digits, 64 to 200.",
}
#: A user id: 1 to 256 characters, no control characters (C0 and DEL).
_USER = {
    "type": "string",
    "minLength": 1,
    "maxLength": 256,
    "pattern": "^[^\\u0000-\\u001f\\u007f]+$",
}
_APP = {
    "type": "string",
    "minLength": 1,
    "description": (
        "The name of an [[apps]] entry in pushd.toml; any other name is a 400 unknown_app."
    ),
}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _nullable(schema: dict[str, Any]) -> dict[str, Any]:
    """An optional field's schema: pushd reads ``null`` as "not given", as clients that
    serialise unset fields as null expect."""
    return {"anyOf": [schema, {"type": "null"}]}


SCHEMAS: dict[str, Any] = {
    "Token": _TOKEN,
    "ApnsToken": _APNS_TOKEN,
    "AppName": _APP,
    "Register": {
        "type": "object",
        "additionalProperties": False,
        "required": ["user", "token", "app"],
        "properties": {"user": _USER, "token": _ref("Token"), "app": _ref("AppName")},
    },
    "Registration": {
        "type": "object",
        "required": ["user", "token", "app", "environment", "registered_at"],
        "properties": {
            "user": _USER,
            "token": _ref("Token"),
            "app": _ref("AppName"),
            "environment": {"enum": ["production", "sandbox"]},
            "registered_at": {"type": "number", "description": "UNIX time, seconds."},
        },
    },
    "Unregister": {
        "type": "object",
        "additionalProperties": False,
        "required": ["token"],
        "properties": {
            "token": _ref("Token"),
            "app": {**_nullable(_ref("AppName")), "description": "Only this app's registration."},
        },
    },
    "User": {
        "type": "object",
        "additionalProperties": False,
        "required": ["user"],
        "properties": {"user": _USER},
    },
    "Removed": {
        "type": "object",
        "required": ["removed"],
        "properties": {"removed": {"type": "integer", "minimum": 0}},
    },
    "Devices": {
        "type": "object",
        "required": ["devices"],
        "properties": {"devices": {"type": "array", "items": _ref("Registration")}},
    },
    "Send": {
        "type": "object",
        "additionalProperties": False,
        "description": (
            "Give exactly one of user (all their devices) or tokens. The APNs payload "
            f"({{aps, ...data}}) must fit APNs' limit ({PAYLOAD_LIMIT} bytes, "
            f"{VOIP_PAYLOAD_LIMIT} for voip) or the answer is 413; for FCM apps the "
            "data keys must be ones FCM allows."
        ),
        "oneOf": [
            {"required": ["user"], "properties": {"user": {"type": "string"}}},
            {"required": ["tokens"], "properties": {"tokens": {"type": "array"}}},
        ],
        "if": {"required": ["push_type"], "properties": {"push_type": {"const": "background"}}},
        "then": {
            "properties": {"priority": {"not": {"const": 10}}},
            "description": "Background pushes go at priority 5 or 1.",
        },
        "properties": {
            "user": _nullable(_USER),
            "tokens": _nullable(
                {
                    "type": "array",
                    "items": _ref("Token"),
                    "minItems": 1,
                    "maxItems": MAX_TOKENS_PER_SEND,
                }
            ),
            "app": {**_nullable(_ref("AppName")), "description": "Only devices of this app."},
            "alert": {
                "oneOf": [
                    {"type": "string"},
                    {
                        "type": "object",
                        "additionalProperties": False,
                        "properties": {
                            "title": {"type": "string"},
                            "subtitle": {"type": "string"},
                            "body": {"type": "string"},
                        },
                    },
                    {"type": "null"},
                ]
            },
            "badge": _nullable({"type": "integer", "minimum": 0}),
            "sound": _nullable({"type": "string"}),
            "data": {
                **_nullable({"type": "object", "propertyNames": {"not": {"const": "aps"}}}),
                "description": "Custom keys beside aps ('aps' itself is APNs').",
            },
            "thread_id": _nullable({"type": "string"}),
            "category": _nullable({"type": "string"}),
            "content_available": {"type": "boolean", "default": False},
            "mutable_content": {"type": "boolean", "default": False},
            "push_type": {"enum": sorted(APNS_PUSH_TYPES), "default": "alert"},
            "priority": {
                "enum": [*sorted(APNS_PRIORITIES), None],
                "description": "Default: 5 for background pushes, else APNs' own (10).",
            },
            "ttl": {
                **_nullable({"type": "integer", "minimum": 0, "maximum": MAX_TTL}),
                "description": (
                    "Seconds the upstream keeps trying; 0 = now or never; at most 28 days "
                    "(FCM's limit; APNs keeps a push about 30 days)."
                ),
            },
            "collapse_id": {
                **_nullable({"type": "string", "maxLength": COLLAPSE_ID_LIMIT}),
                "description": f"At most {COLLAPSE_ID_LIMIT} bytes of UTF-8.",
            },
        },
    },
    "Result": {
        "type": "object",
        "required": ["token", "app", "status"],
        "properties": {
            "token": {"type": "string"},
            "app": {"type": ["string", "null"]},
            "status": {
                "enum": ["delivered", "removed", "retrying", "failed"],
                "description": (
                    "removed: the token is dead and was deleted; retrying: pushd keeps "
                    "trying in the background; failed: see reason."
                ),
            },
            "reason": {"type": "string"},
        },
    },
    "SendResult": {
        "type": "object",
        "properties": {
            "results": {"type": "array", "items": {"$ref": "#/components/schemas/Result"}},
            "summary": {
                "type": "object",
                "properties": {
                    name: {"type": "integer"}
                    for name in ("delivered", "removed", "retrying", "failed")
                },
            },
        },
    },
    "Error": {
        "type": "object",
        "required": ["error"],
        "properties": {
            "error": {
                "type": "object",
                "required": ["code", "message"],
                "properties": {
                    "code": {"type": "string"},
                    "message": {"type": "string"},
                    "field": {"type": "string", "description": "The offending key path."},
                },
            }
        },
    },
    "Health": {
        "type": "object",
        "required": ["status"],
        "description": "Only status without a credential; the rest with one.",
        "properties": {
            "status": {"enum": ["ok", "degraded"]},
            "version": {"type": "string"},
            "apps": {"type": "object"},
            "store": {
                "type": "object",
                "description": "state ok | failing, and the failure kind (e.g. disk_full)",
            },
            "spooled": {
                "type": "integer",
                "description": "Deliveries answered retrying that are not final yet",
            },
            "matrix": {
                "type": "object",
                "description": "Matrix gateway counters, when an app serves Matrix",
            },
        },
    },
    "Status": {
        "type": "object",
        "required": ["status", "version", "generated_at", "apps", "servers"],
        "properties": {
            "status": {"enum": ["ok", "degraded"]},
            "version": {"type": "string"},
            "generated_at": {"type": "number", "description": "UNIX seconds"},
            "apps": {"type": "array", "items": {"type": "object"}},
            "servers": {"type": "array", "items": {"type": "object"}},
        },
    },
}

OPENAPI: dict[str, Any] = {
    "openapi": "3.1.0",
    "info": {
        "title": "pushd native API",
        "version": __version__,
        "description": (
            "Register devices and send notifications through pushd. Every request is "
            "authenticated with a chat server's key (pushd server add)."
        ),
    },
    "paths": {
        "/v1/devices": _post(
            "Register a device token for a user (idempotent)",
            "Register",
            {
                "200": _ok("Registration", "Already registered; renewed"),
                "201": _ok("Registration", "Registered"),
            },
        ),
        "/v1/devices/unregister": _post(
            "Remove a device token", "Unregister", {"200": _ok("Removed", "Count removed")}
        ),
        "/v1/users/unregister": _post(
            "Remove all devices of a user", "User", {"200": _ok("Removed", "Count removed")}
        ),
        "/v1/users/devices": _post(
            "List a user's devices", "User", {"200": _ok("Devices", "The user's devices")}
        ),
        "/v1/notifications": _post(
            "Send a notification to a user's devices or to listed tokens",
            "Send",
            {"200": _ok("SendResult", "One result per device")},
        ),
        "/v1/openapi.json": {
            "get": {
                "summary": "This document",
                "responses": {"200": {"description": "OpenAPI 3.1 document"}},
            }
        },
        "/healthz": {
            "get": {
                "summary": "Liveness for anyone; per-app state with a credential",
                "description": (
                    "Without Authorization: only status. With Authorization: Bearer and "
                    "a chat server's key or the admin token ([server] admin_token_file): "
                    "apps, counters and queues."
                ),
                "responses": {
                    "200": _ok("Health", "Running"),
                    "401": _ERROR,
                    "503": _ok("Health", "The store is failing"),
                },
            },
            "head": {
                "summary": "The same status code as GET, no body (uptime checks)",
                "responses": {
                    "200": {"description": "Running"},
                    "401": {"description": "A wrong credential"},
                    "503": {"description": "The store is failing"},
                },
            },
        },
        "/status": {
            "get": {
                "summary": "The admin's status page (HTML; it asks for the token in the browser)",
                "responses": {"200": {"description": "The page", "content": {"text/html": {}}}},
            }
        },
        "/status.json": {
            "get": {
                "summary": "What the status page shows: apps, recent outcomes, chat servers",
                "description": (
                    "Needs Authorization: Bearer with the admin token (every chat server "
                    "listed) or a chat server's key (only that server listed)."
                ),
                "responses": {"200": _ok("Status", "The status"), "401": _ERROR},
            }
        },
        "/health": {
            "get": {
                "summary": "Liveness only: 200 with an empty body (as Sygnal's /health)",
                "responses": {"200": {"description": "Running"}},
            }
        },
    },
    "components": {
        "securitySchemes": {"serverKey": {"type": "http", "scheme": "bearer"}},
        "schemas": SCHEMAS,
        "responses": {
            "Error": {
                "description": "The request was refused",
                "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
            }
        },
    },
}
