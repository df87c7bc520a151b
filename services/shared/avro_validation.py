"""Validation of a record against its Avro schema before it is written.

fastavro on its own silently truncates a float given for an ``int``, writes an ``int``
out of 32-bit range, ignores unknown fields and accepts a decimal beyond the declared
precision; :func:`compile_validator` compiles a schema once into a check that refuses
all of these with a reason naming the field (a ``float`` for a decimal is refused,
never converted). Used by :class:`services.shared.avro.AvroCodec`.
"""

from __future__ import annotations

import datetime as _dt
import uuid
from collections.abc import Callable, Mapping
from decimal import Decimal
from typing import Any

from services.shared.errors import SchemaViolation

_INT_MIN, _INT_MAX = -(2**31), 2**31 - 1
_LONG_MIN, _LONG_MAX = -(2**63), 2**63 - 1

Check = Callable[[Any, str], None]


class _Invalid(Exception):
    pass


def _fail(path: str, message: str) -> None:
    raise _Invalid(f"{path or '<record>'}: {message}")


def compile_validator(parsed: Any) -> Callable[[Any], None]:
    """Turn a parsed schema into a fast checker raising :class:`SchemaViolation`."""
    named: dict[str, Check] = {}
    check = _compile(parsed, named)
    name = parsed["name"]

    def validate(record: Any) -> None:
        try:
            check(record, "")
        except _Invalid as exc:
            raise SchemaViolation(f"{name}: {exc}") from None

    return validate


def _describe(value: Any) -> str:
    text = repr(value)
    if len(text) > 60:
        text = text[:57] + "..."
    return f"{type(value).__name__} {text}"


def _compile(schema: Any, named: dict[str, Check]) -> Check:
    if isinstance(schema, str):
        prim = _PRIMITIVE_CHECKS.get(schema)
        if prim is not None:
            return prim
        ref = schema

        def check_ref(value: Any, path: str) -> None:
            named[ref](value, path)

        return check_ref
    if isinstance(schema, list):
        return _compile_union(schema, named)
    kind = schema["type"]
    logical = schema.get("logicalType")
    if logical == "decimal" and kind in ("bytes", "fixed"):
        return _decimal_check(schema)
    if logical is not None and kind in ("int", "long", "string"):
        special = _logical_check(kind, logical)
        if special is not None:
            return special
    if kind == "record" or kind == "error":
        return _compile_record(schema, named)
    if kind == "enum":
        symbols = frozenset(schema["symbols"])

        def check_enum(value: Any, path: str) -> None:
            if not isinstance(value, str) or value not in symbols:
                _fail(path, f"{_describe(value)} is not a symbol of {schema['name']}")

        named[schema["name"]] = check_enum
        return check_enum
    if kind == "fixed":
        size = schema["size"]

        def check_fixed(value: Any, path: str) -> None:
            if not isinstance(value, bytes | bytearray) or len(value) != size:
                _fail(path, f"{_describe(value)} is not {size} bytes (fixed {schema['name']})")

        named[schema["name"]] = check_fixed
        return check_fixed
    if kind == "array":
        items = _compile(schema["items"], named)

        def check_array(value: Any, path: str) -> None:
            if not isinstance(value, list | tuple):
                _fail(path, f"{_describe(value)} is not an array")
            for i, item in enumerate(value):
                items(item, f"{path}[{i}]")

        return check_array
    if kind == "map":
        values = _compile(schema["values"], named)

        def check_map(value: Any, path: str) -> None:
            if not isinstance(value, Mapping):
                _fail(path, f"{_describe(value)} is not a map")
            for k, v in value.items():
                if not isinstance(k, str):
                    _fail(path, f"map key {_describe(k)} is not a string")
                values(v, f"{path}[{k!r}]")

        return check_map
    # {"type": "int"} and friends, or a logical type we do not special-case
    return _compile(kind, named)


def _compile_record(schema: Mapping[str, Any], named: dict[str, Check]) -> Check:
    name = schema["name"]
    fields: list[tuple[str, bool, Check]] = []

    def check_record(value: Any, path: str) -> None:
        if not isinstance(value, Mapping):
            _fail(path, f"{_describe(value)} is not a record ({name})")
        if not names.issuperset(value):
            unknown = sorted(str(k) for k in value if k not in names)
            _fail(path, f"unknown field(s) {', '.join(unknown)} for {name}")
        prefix = f"{path}." if path else ""
        for fname, has_default, check in fields:
            if fname in value:
                check(value[fname], prefix + fname)
            elif not has_default:
                _fail(prefix + fname, "missing (the field has no default)")

    named[name] = check_record  # before the fields: records may be recursive
    for f in schema["fields"]:
        fields.append((f["name"], "default" in f, _compile(f["type"], named)))
    names = frozenset(f[0] for f in fields)
    return check_record


def _compile_union(branches: list[Any], named: dict[str, Check]) -> Check:
    checks = [_compile(b, named) for b in branches]
    nullable = "null" in branches
    others = [c for b, c in zip(branches, checks, strict=True) if b != "null"]
    label = "[" + ", ".join(type_label(b) for b in branches) + "]"

    def check_union(value: Any, path: str) -> None:
        if value is None:
            if nullable:
                return
            _fail(path, f"null is not allowed by union {label}")
        reasons = []
        for check in others:
            try:
                check(value, path)
                return
            except _Invalid as exc:
                reasons.append(str(exc))
        if len(reasons) == 1:
            raise _Invalid(reasons[0])
        _fail(path, f"{_describe(value)} matches no branch of union {label}")

    return check_union


def type_label(schema: Any) -> str:
    if isinstance(schema, str):
        return schema
    if isinstance(schema, dict):
        return str(schema.get("name") or schema.get("logicalType") or schema.get("type"))
    return "union"


def _check_null(value: Any, path: str) -> None:
    if value is not None:
        _fail(path, f"{_describe(value)} is not null")


def _check_boolean(value: Any, path: str) -> None:
    if not isinstance(value, bool):
        _fail(path, f"{_describe(value)} is not a boolean")


def _check_int(value: Any, path: str) -> None:
    if type(value) is not int:
        if isinstance(value, float):
            _fail(path, f"{_describe(value)} is a float; an Avro int takes an int only")
        _fail(path, f"{_describe(value)} is not an int")
    if not _INT_MIN <= value <= _INT_MAX:
        _fail(path, f"{value} is outside the 32-bit range of an Avro int")


def _check_long(value: Any, path: str) -> None:
    if type(value) is not int:
        if isinstance(value, float):
            _fail(path, f"{_describe(value)} is a float; an Avro long takes an int only")
        _fail(path, f"{_describe(value)} is not an int")
    if not _LONG_MIN <= value <= _LONG_MAX:
        _fail(path, f"{value} is outside the 64-bit range of an Avro long")


def _check_floating(value: Any, path: str) -> None:
    if isinstance(value, bool) or not isinstance(value, float | int):
        _fail(path, f"{_describe(value)} is not a number (float/double)")


def _check_string(value: Any, path: str) -> None:
    if not isinstance(value, str):
        _fail(path, f"{_describe(value)} is not a string")


def _check_bytes(value: Any, path: str) -> None:
    if not isinstance(value, bytes | bytearray):
        _fail(path, f"{_describe(value)} is not bytes")


_PRIMITIVE_CHECKS: dict[str, Check] = {
    "null": _check_null,
    "boolean": _check_boolean,
    "int": _check_int,
    "long": _check_long,
    "float": _check_floating,
    "double": _check_floating,
    "string": _check_string,
    "bytes": _check_bytes,
}


def _decimal_check(schema: Mapping[str, Any]) -> Check:
    precision = int(schema["precision"])
    scale = int(schema.get("scale", 0))
    max_adjusted = precision - scale  # abs(value) < 10 ** (precision - scale)

    def check_decimal(value: Any, path: str) -> None:
        if type(value) is not Decimal:
            if isinstance(value, float):
                _fail(
                    path,
                    f"{_describe(value)} is a float; decimal({precision},{scale}) takes "
                    f"decimal.Decimal only (money is exact, never a float)",
                )
            _fail(
                path, f"{_describe(value)} is not a decimal.Decimal (decimal({precision},{scale}))"
            )
        if not value.is_finite():
            _fail(path, f"{value} is not a finite decimal")
        exponent = value.as_tuple().exponent
        if isinstance(exponent, int) and -exponent > scale:
            _fail(
                path,
                f"{value} has more than {scale} decimal places (decimal({precision},{scale})); "
                f"quantize it explicitly",
            )
        if value and value.adjusted() >= max_adjusted:
            _fail(path, f"{value} does not fit decimal({precision},{scale})")

    return check_decimal


def _logical_check(kind: str, logical: str) -> Check | None:
    base = _PRIMITIVE_CHECKS[kind]
    if logical in ("timestamp-millis", "timestamp-micros"):

        def check_timestamp(value: Any, path: str) -> None:
            if isinstance(value, _dt.datetime):
                if value.tzinfo is None:
                    _fail(path, f"naive datetime {value}; {logical} needs a timezone-aware one")
                return
            base(value, path)

        return check_timestamp
    if logical in ("local-timestamp-millis", "local-timestamp-micros"):
        return _either(_dt.datetime, base, logical)
    if logical == "date":
        return _either(_dt.date, base, logical)
    if logical in ("time-millis", "time-micros"):
        return _either(_dt.time, base, logical)
    if logical == "uuid":
        return _either(uuid.UUID, base, logical)
    return None


def _either(cls: type, base: Check, logical: str) -> Check:
    def check(value: Any, path: str) -> None:
        if isinstance(value, cls):
            return
        try:
            base(value, path)
        except _Invalid:
            _fail(path, f"{_describe(value)} is neither a {cls.__name__} nor raw {logical}")

    return check
