"""A strict cattrs converter, shared by the config file and the JSON wire models.

cattrs by default coerces: ``port = "80"`` becomes 80 and ``"name": 5`` becomes "5".
For a config file or an API request a wrong type is a mistake the author wants to hear
about, with the key path that holds it, so this converter refuses instead, and
:func:`describe_error` flattens cattrs' error tree into ``key.path: message`` lines.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any, Literal, get_args, get_origin

import attrs
import cattrs
from cattrs.errors import ClassValidationError, IterableValidationError

Hook = Callable[[Any, Any], Any]


def _strict(kind: type, *, integral_floats: bool = False) -> Hook:
    def hook(value: Any, _: Any) -> Any:
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            return float(value)
        if kind is float and isinstance(value, float) and not math.isfinite(value):
            # TOML has nan and inf: every limit, timeout and delay must be a real number
            # (a nan deadline crashed the first send; nan compares false to every bound).
            raise ValueError(f"expected a finite number, got {value}")
        if integral_floats and kind is int and isinstance(value, float) and value.is_integer():
            return int(value)
        if not isinstance(value, kind) or (kind is not bool and isinstance(value, bool)):
            raise TypeError(f"expected {_NAMES[kind]}, got {_type_name(value)}")
        return value

    return hook


_NAMES = {str: "a string", int: "an integer", float: "a number", bool: "true or false"}


def _type_name(value: Any) -> str:
    names = {dict: "a table/object", list: "an array", type(None): "null"}
    for kind, name in (*names.items(), *_NAMES.items()):
        if type(value) is kind:
            return name
    return type(value).__name__


def _literal(kind: Any) -> Hook:
    allowed = get_args(kind)

    def hook(value: Any, _: Any) -> Any:
        if value not in allowed or type(value) is not type(allowed[0]):
            choices = ", ".join(repr(choice) for choice in allowed)
            raise ValueError(f"must be one of {choices}, got {value!r}")
        return value

    return hook


def _guarded(container: type, expected: str, inner: Hook) -> Hook:
    def hook(value: Any, kind: Any) -> Any:
        if not isinstance(value, container):
            raise TypeError(f"expected {expected}, got {_type_name(value)}")
        return inner(value, kind)

    return hook


def _origin_is(origin: Any) -> Callable[[Any], bool]:
    def predicate(kind: Any) -> bool:
        found: Any = get_origin(kind)
        return bool(found is origin)

    return predicate


def make_converter(*, integral_floats: bool = False) -> cattrs.Converter:
    """A converter that forbids unknown keys and never coerces types.

    ``integral_floats``: take ``3600.0`` where an integer belongs.  JSON has one number
    type, so to JSON Schema (and the OpenAPI document) ``3600.0`` *is* an integer, and a
    client's float arithmetic produces it; TOML has two, so the config file keeps them
    apart.
    """
    converter = cattrs.Converter(forbid_extra_keys=True)
    for kind in (str, int, float, bool):
        converter.register_structure_hook(kind, _strict(kind, integral_floats=integral_floats))
    converter.register_structure_hook_factory(_origin_is(Literal), _literal)

    # Without these guards a list or string where a table belongs (or a table where an
    # array belongs) fails deep inside cattrs with an AttributeError nobody can act on.
    def table_factory(kind: Any) -> Hook:
        return _guarded(dict, "a table/object", converter.gen_structure_attrs_fromdict(kind))

    def mapping_factory(kind: Any) -> Hook:
        return _guarded(dict, "an object", converter.gen_structure_mapping(kind))

    def array_factory(kind: Any) -> Hook:
        as_list: Any = list.__class_getitem__(get_args(kind)[0])
        inner = converter.get_structure_hook(as_list)
        return _guarded(list, "an array", lambda value, _: tuple(inner(value, as_list)))

    converter.register_structure_hook_factory(attrs.has, table_factory)
    converter.register_structure_hook_factory(_origin_is(tuple), array_factory)
    converter.register_structure_hook_factory(_origin_is(dict), mapping_factory)
    converter.register_structure_hook(Any, lambda value, _: value)
    return converter


CONVERTER = make_converter()
#: For JSON request bodies: as :data:`CONVERTER`, but ``5.0`` is the integer 5.
WIRE_CONVERTER = make_converter(integral_floats=True)


def _key_path(path: str) -> str:
    return path.removeprefix("$").removeprefix(".") or "(top level)"


def _walk(error: BaseException, path: str) -> Iterable[str]:
    if isinstance(error, ClassValidationError | IterableValidationError):
        with_notes, without = error.group_exceptions()
        for exc, note in with_notes:
            name = getattr(note, "name", getattr(note, "index", "?"))
            sub = f"{path}[{name}]" if isinstance(name, int) else f"{path}.{name}"
            if isinstance(exc, KeyError):
                yield f"{_key_path(sub)}: required key missing"
            else:
                yield from _walk(exc, sub)
        for exc in without:
            yield from _walk(exc, path)
    elif isinstance(error, cattrs.ForbiddenExtraKeysError):
        for key in sorted(error.extra_fields):
            yield f"{_key_path(f'{path}.{key}')}: unknown key (check its spelling and section)"
    elif isinstance(error, ExceptionGroup):
        for exc in error.exceptions:
            yield from _walk(exc, path)
    else:
        yield f"{_key_path(path)}: {error}"


def describe_error(error: BaseException) -> list[str]:
    """Every problem in a cattrs error, as sorted ``key.path: message`` lines."""
    return sorted(set(_walk(error, "$")))


def first_key(problem: str) -> str:
    """The key path a :func:`describe_error` line is about."""
    return problem.split(":", 1)[0]
