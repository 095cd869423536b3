"""The Matrix gateway's reuse of one push for a request's like devices: when two
default payloads count as the same (encode alike), and the per-request memory."""

from __future__ import annotations

from typing import Any

import pytest

from pushd import jsonutil
from pushd.frontends.matrix.same_push import MAX_KINDS, SamePush, same_json


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ({}, {}),
        (
            {"aps": {"alert": {"loc-args": ["x", 1, None]}}},
            {"aps": {"alert": {"loc-args": ["x", 1, None]}}},
        ),
        ({"n": 1.5}, {"n": 1.5}),
        ("text", "text"),
        (None, None),
    ],
)
def test_values_that_encode_alike_are_the_same(a: Any, b: Any) -> None:
    assert jsonutil.dumps(a) == jsonutil.dumps(b)
    assert same_json(a, b)


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ({"n": 1}, {"n": True}),
        ({"n": 1}, {"n": 1.0}),
        ({"n": 0.0}, {"n": -0.0}),
        ({"n": 0}, {"n": False}),
        ({"a": 1, "b": 2}, {"b": 2, "a": 1}),
        ({"a": [1, 2]}, {"a": [1, 2, 3]}),
        ({"a": [1, 2]}, {"a": [2, 1]}),
        ({"a": {}}, {"a": []}),
        ({"a": None}, {}),
        ({"a": "1"}, {"a": 1}),
    ],
)
def test_values_that_encode_differently_are_not(a: Any, b: Any) -> None:
    assert jsonutil.dumps(a) != jsonutil.dumps(b)
    assert not same_json(a, b)
    assert not same_json(b, a)


def test_a_push_is_found_only_for_the_same_app_payload_and_sound() -> None:
    ios, android = object(), object()
    pushes: SamePush[object, str] = SamePush()
    pushes.keep(ios, {"k": 1}, "ding", "first")
    assert pushes.find(ios, {"k": 1}, "ding") == (True, "first")
    assert pushes.find(android, {"k": 1}, "ding") == (False, None)
    assert pushes.find(ios, {"k": True}, "ding") == (False, None)
    assert pushes.find(ios, {"k": 1}, None) == (False, None)
    pushes.keep(ios, {"k": 1}, None, "second")
    assert pushes.find(ios, {"k": 1}, None) == (True, "second")


def test_what_was_built_may_be_none_or_an_error_and_is_still_found() -> None:
    pushes: SamePush[str, ValueError | None] = SamePush()
    error = ValueError("too big")
    pushes.keep("ios", {"big": 1}, None, error)
    pushes.keep("ios", {}, None, None)
    assert pushes.find("ios", {"big": 1}, None) == (True, error)
    assert pushes.find("ios", {}, None) == (True, None)


def test_memory_is_bounded_per_request() -> None:
    pushes: SamePush[str, int] = SamePush()
    for n in range(MAX_KINDS + 5):
        pushes.keep("ios", {"n": n}, None, n)
    assert pushes.find("ios", {"n": MAX_KINDS - 1}, None) == (True, MAX_KINDS - 1)
    assert pushes.find("ios", {"n": MAX_KINDS}, None) == (False, None)
    assert len(pushes.kinds) == MAX_KINDS
