"""The OpenAPI document matches what is served, route for route and field for field."""

from __future__ import annotations

import copy
from typing import Any

import attrs
import hypothesis
import jsonschema_rs
import requests
import schemathesis
import trio
from schemathesis import checks as schemathesis_checks
from schemathesis.config import SchemathesisConfig
from schemathesis.generation.modes import GenerationMode

from pushd.frontends.native import RegisterBody, SendBody, UnregisterBody, UserBody
from tests.conftest import Pushd, token


async def test_every_route_is_documented_and_every_documented_path_served(pushd: Pushd) -> None:
    response = await pushd.client.get(pushd.url + "/v1/openapi.json")
    assert response.status_code == 200
    document = response.json()
    assert document["openapi"].startswith("3.1")
    documented = {
        (method.upper(), path)
        for path, operations in document["paths"].items()
        for method in operations
    }
    served = {(route.method, route.path) for route in pushd.services.routes}
    assert documented == served


async def test_request_schemas_match_the_wire_models(pushd: Pushd) -> None:
    schemas = (await pushd.client.get(pushd.url + "/v1/openapi.json")).json()["components"][
        "schemas"
    ]
    for name, model in (
        ("Register", RegisterBody),
        ("Unregister", UnregisterBody),
        ("User", UserBody),
        ("Send", SendBody),
    ):
        fields = {field.name for field in attrs.fields(model)}
        assert set(schemas[name]["properties"]) == fields, name
        required = {f.name for f in attrs.fields(model) if f.default is attrs.NOTHING}
        assert set(schemas[name].get("required", [])) == required, name


async def test_documented_responses_include_errors_for_authenticated_routes(pushd: Pushd) -> None:
    document = (await pushd.client.get(pushd.url + "/v1/openapi.json")).json()
    for path, operations in document["paths"].items():
        for operation in operations.values():
            if operation.get("security"):
                assert {"400", "401", "403"} <= set(operation["responses"]), path


#: Bodies the document and the code once disagreed on (issue 10, item 11), and their
#: neighbours: for each, the server takes it exactly when the document allows it.
AGREEMENT_CASES: tuple[tuple[str, str, dict[str, Any]], ...] = (
    ("Unregister", "/v1/devices/unregister", {"token": token(1), "app": None}),
    ("Unregister", "/v1/devices/unregister", {"token": token(1), "app": ""}),
    ("Unregister", "/v1/devices/unregister", {"token": token(1), "app": "chat"}),
    ("Unregister", "/v1/devices/unregister", {"token": "not a token"}),
    ("Register", "/v1/devices", {"user": "u1", "token": token(1), "app": ""}),
    ("Register", "/v1/devices", {"user": "u1", "token": token(1), "app": None}),
    ("Register", "/v1/devices", {"user": "", "token": token(1), "app": "chat"}),
    ("Register", "/v1/devices", {"user": "u1", "token": token(1), "app": "chat"}),
    ("Register", "/v1/devices", {"user": "u1", "token": "ab" * 31, "app": "chat"}),
    ("User", "/v1/users/devices", {"user": ""}),
    ("User", "/v1/users/devices", {"user": "u" * 257}),
    ("Send", "/v1/notifications", {}),
    ("Send", "/v1/notifications", {"user": "u1", "tokens": [token(1)]}),
    ("Send", "/v1/notifications", {"user": "u1", "tokens": None}),
    ("Send", "/v1/notifications", {"user": None, "tokens": [token(1)]}),
    ("Send", "/v1/notifications", {"user": None, "tokens": None}),
    ("Send", "/v1/notifications", {"tokens": []}),
    ("Send", "/v1/notifications", {"tokens": [token(i) for i in range(1001)]}),
    ("Send", "/v1/notifications", {"user": "u1", "app": ""}),
    ("Send", "/v1/notifications", {"user": "u1", "app": None}),
    ("Send", "/v1/notifications", {"user": "u1", "ttl": 60.0, "badge": 1.0}),
    ("Send", "/v1/notifications", {"user": "u1", "ttl": 60.5}),
    ("Send", "/v1/notifications", {"user": "u1", "data": {"aps": {}}}),
    ("Send", "/v1/notifications", {"user": "u1", "push_type": "background", "priority": 10}),
    ("Send", "/v1/notifications", {"user": "u1", "push_type": "background", "priority": 5}),
    ("Send", "/v1/notifications", {"user": "u1", "alert": {"title": None}}),
    ("Send", "/v1/notifications", {"user": "u1", "content_available": None}),
    ("Send", "/v1/notifications", {"user": "u1", "collapse_id": "c" * 65}),
)


async def test_the_document_allows_exactly_what_the_server_takes(pushd: Pushd) -> None:
    document = _this_deployment(
        (await pushd.client.get(pushd.url + "/v1/openapi.json")).json(), pushd
    )
    disagreements = []
    for schema_name, path, body in AGREEMENT_CASES:
        validator = jsonschema_rs.Draft202012Validator(
            {"$ref": f"#/components/schemas/{schema_name}", "components": document["components"]}
        )
        response = await pushd.post(path, body)
        assert response.status_code < 500, response.text
        if validator.is_valid(body) != (response.status_code < 300):
            disagreements.append(f"{path} {body}: {response.status_code} {response.text}")
    assert not disagreements, "\n".join(disagreements)


# --- schemathesis: the document against the running code ------------------------------

#: Examples per operation and generation mode: ~100 requests each, about 10 s in all on
#: a loaded 2-core machine; enough to find a field the document and the code disagree on.
SCHEMATHESIS_EXAMPLES = 100
#: What schemathesis checks on every answer.  ``positive_data_acceptance`` and
#: ``negative_data_rejection`` are the ones that hold the document to the code: a
#: request the document allows must not be refused, one it forbids must not be taken.
SCHEMATHESIS_CHECKS = (
    "not_a_server_error",
    "status_code_conformance",
    "content_type_conformance",
    "response_schema_conformance",
    "response_headers_conformance",
    "positive_data_acceptance",
    "negative_data_rejection",
)
#: 413 is never a disagreement: the APNs payload limit (and the server's body limit)
#: is on the encoded whole, which no per-field schema can state; the document says so.
SCHEMATHESIS_CONFIG = {
    "checks": {
        "positive_data_acceptance": {"expected-statuses": ["2xx", "413"]},
        "negative_data_rejection": {"expected-statuses": ["400", "413"]},
    }
}


def _this_deployment(document: dict[str, Any], pushd: Pushd) -> dict[str, Any]:
    """The served document narrowed to the test's deployment.

    The document is the same for every deployment, so it cannot list the configured
    apps, nor say that registering with an APNs app takes only an APNs token; both apps
    of the test deployment are APNs apps.
    """
    narrowed = copy.deepcopy(document)
    schemas = narrowed["components"]["schemas"]
    schemas["AppName"] = {"enum": sorted(app.name for app in pushd.config.apps)}
    assert {app.provider for app in pushd.config.apps} == {"apns"}
    schemas["Register"]["properties"]["token"] = {"$ref": "#/components/schemas/ApnsToken"}
    return narrowed


def _schemathesis(url: str, key: str, document: dict[str, Any]) -> list[str]:
    """Run schemathesis on every operation, positive and negative; the failures found.

    Synchronous (schemathesis and Hypothesis are), so it runs in a worker thread while
    pushd keeps serving on the test's trio loop.  Seeded: ``derandomize`` makes every
    run send the same requests.
    """
    schema = schemathesis.openapi.from_dict(
        document, config=SchemathesisConfig.from_dict(SCHEMATHESIS_CONFIG)
    )
    checks = [getattr(schemathesis_checks, name) for name in SCHEMATHESIS_CHECKS]
    headers = {"authorization": f"Bearer {key}"}
    session = requests.Session()
    failures: list[str] = []
    for result in schema.get_all_operations():
        operation = result.ok()
        for mode in GenerationMode:
            if mode.is_negative and not operation.body:
                continue  # nothing to get wrong in a GET without parameters

            @hypothesis.settings(
                max_examples=SCHEMATHESIS_EXAMPLES,
                derandomize=True,
                database=None,
                deadline=None,
                suppress_health_check=list(hypothesis.HealthCheck),
            )
            @hypothesis.given(case=operation.as_strategy(generation_mode=mode, headers=headers))
            def run(case: Any) -> None:
                case.call_and_validate(
                    base_url=url, session=session, headers=headers, checks=checks
                )

            try:
                run()
            except (Exception, BaseExceptionGroup) as error:  # a report with a curl line
                failures.append(f"{operation.label} ({mode.value}): {error}")
    session.close()
    return failures


async def test_schemathesis_finds_the_document_and_the_code_agree(pushd: Pushd) -> None:
    document = (await pushd.client.get(pushd.url + "/v1/openapi.json")).json()
    failures = await trio.to_thread.run_sync(
        _schemathesis, pushd.url, pushd.key, _this_deployment(document, pushd)
    )
    assert not failures, "\n\n".join(failures)
