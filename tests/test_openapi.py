"""The OpenAPI document matches what is served, route for route and field for field."""

from __future__ import annotations

import attrs

from pushd.frontends.native import RegisterBody, SendBody, UnregisterBody, UserBody
from tests.conftest import Pushd


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
