"""Checked access to a transaction's JSON arguments: every refusal names the field, the value and what was expected."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from fractions import Fraction
from typing import Any, NoReturn

from bcfl_common.errors import ContractError
from bcfl_common.vocabulary import CONTENT_ID, IDENTIFIER, SALT_HEX, SHA256_HEX

MAX_DEPTH = 32  # nesting limit for opaque JSON (data schema, hyperparameters)
MAX_TEXT = 1024  # free-text fields (reasons)

_MISSING: Any = object()


def _show(value: Any) -> str:
    text = json.dumps(value, sort_keys=True, ensure_ascii=False, default=str)
    return text if len(text) <= 80 else text[:77] + "..."


def _malformed(message: str) -> NoReturn:
    raise ContractError(message, code="MALFORMED_ARGS")


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # Two parsers could pick different values for a repeated key; refuse the ambiguity.
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise ValueError(f"duplicate key {key!r}")
        result[key] = value
    return result


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _finite_float(text: str) -> float:
    value = float(text)
    if value in (float("inf"), float("-inf")):
        raise ValueError(f"number {text} is out of range")
    return value


def _check_tree(value: Any, depth: int) -> None:
    if depth > MAX_DEPTH:
        _malformed(f"args: nested deeper than {MAX_DEPTH} levels")
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            _malformed("args: a string contains a lone surrogate (not valid UTF-8)")
    elif isinstance(value, dict):
        for key, item in value.items():
            _check_tree(key, depth + 1)
            _check_tree(item, depth + 1)
    elif isinstance(value, list):
        for item in value:
            _check_tree(item, depth + 1)


def parse_args(raw: bytes) -> dict[str, Any]:
    """Decode one JSON object; anything else is MALFORMED_ARGS."""
    try:
        text = bytes(raw).decode("utf-8")
    except UnicodeDecodeError as exc:
        _malformed(f"args: not UTF-8 ({exc.reason} at byte {exc.start})")
    try:
        value = json.loads(
            text,
            object_pairs_hook=_no_duplicate_keys,
            parse_constant=_reject_constant,
            parse_float=_finite_float,
        )
    except RecursionError:
        _malformed(f"args: nested deeper than {MAX_DEPTH} levels")
    except ValueError as exc:
        _malformed(f"args: not valid JSON ({exc})")
    if not isinstance(value, dict):
        _malformed(f"args: expected one JSON object, got {type(value).__name__}")
    _check_tree(value, 0)
    return value


class Args:
    """One JSON object of arguments; each accessor checks one field and remembers it was read.

    ``done()`` refuses fields nobody read, so a typo ("treshold") is an error rather than a
    silently applied default. An explicit JSON null counts as absent.
    """

    def __init__(self, data: dict[str, Any], prefix: str = ""):
        self._data = data
        self._prefix = prefix
        self._read: set[str] = set()

    # -- plumbing ---------------------------------------------------------------------------
    def field(self, name: str) -> str:
        return f"{self._prefix}{name}"

    def fail(
        self, name: str, value: Any, expected: str, code: str = "INVALID_ARGUMENT"
    ) -> NoReturn:
        field = self.field(name)
        shown = "missing" if value is _MISSING else _show(value)
        raise ContractError(
            f"{field}: got {shown}, expected {expected}",
            code=code,
            detail={
                "field": field,
                "value": None if value is _MISSING else value,
                "expected": expected,
            },
        )

    def has(self, name: str) -> bool:
        return self._data.get(name) is not None

    def _take(self, name: str, default: Any, expected: str) -> Any:
        self._read.add(name)
        value = self._data.get(name)
        if value is None:
            if default is _MISSING:
                self.fail(name, _MISSING, expected)
            return default
        return value

    def done(self) -> None:
        unknown = sorted(set(self._data) - self._read)
        if unknown:
            known = ", ".join(sorted(self._read)) or "none"
            name = unknown[0]
            self.fail(name, self._data[name], f"no such field (known fields: {known})")

    # -- scalars ----------------------------------------------------------------------------
    def string(
        self,
        name: str,
        *,
        pattern: re.Pattern[str] | None = None,
        expected: str = "a string",
        max_len: int = MAX_TEXT,
        default: Any = _MISSING,
    ) -> Any:
        value = self._take(name, default, expected)
        if value is default and default is not _MISSING:
            return value
        if not isinstance(value, str) or not value or len(value) > max_len:
            self.fail(name, value, f"{expected} (1 to {max_len} characters)")
        if pattern is not None and not pattern.fullmatch(value):
            self.fail(name, value, expected)
        return value

    def identifier(self, name: str, default: Any = _MISSING) -> Any:
        return self.string(
            name,
            pattern=IDENTIFIER,
            expected="an identifier: 1-64 of A-Z a-z 0-9 . _ - starting with a letter or digit",
            default=default,
        )

    def sha256(self, name: str) -> str:
        return self.string(
            name, pattern=SHA256_HEX, expected="a sha256 digest: 64 lowercase hex digits"
        )

    def content_id(self, name: str, default: Any = _MISSING) -> Any:
        return self.string(
            name,
            pattern=CONTENT_ID,
            expected="a content id: 1-256 printable ASCII characters, no spaces",
            default=default,
        )

    def salt(self, name: str) -> str:
        return self.string(
            name, pattern=SALT_HEX, expected="a salt: 32 to 128 lowercase hex digits"
        )

    def integer(self, name: str, *, minimum: int, maximum: int, default: Any = _MISSING) -> Any:
        expected = f"an integer from {minimum} to {maximum}"
        value = self._take(name, default, expected)
        if value is default and default is not _MISSING:
            return value
        # bool is an int in Python but never a count or a score on the wire.
        if isinstance(value, bool) or not isinstance(value, int) or not minimum <= value <= maximum:
            self.fail(name, value, expected)
        return value

    def boolean(self, name: str, default: Any = _MISSING) -> Any:
        value = self._take(name, default, "true or false")
        if not isinstance(value, bool):
            self.fail(name, value, "true or false")
        return value

    def choice(self, name: str, options: tuple[str, ...], default: Any = _MISSING) -> Any:
        expected = "one of " + ", ".join(repr(o) for o in options)
        value = self._take(name, default, expected)
        if value is default and default is not _MISSING:
            return value
        if value not in options:
            self.fail(name, value, expected)
        return value

    def fraction(self, name: str, default: Any = _MISSING) -> list[int]:
        """A probability in (0, 1) as a decimal/ratio string ("1e-5", "1/100000") or [num, den]."""
        expected = 'a number in (0, 1) as a string ("1e-5", "1/100000") or [numerator, denominator]'
        value = self._take(name, default, expected)
        try:
            if isinstance(value, str) and len(value) <= 64:
                number = Fraction(value)
            elif (
                isinstance(value, list)
                and len(value) == 2
                and all(isinstance(v, int) and not isinstance(v, bool) for v in value)
                and value[1] != 0
            ):
                number = Fraction(value[0], value[1])
            else:
                self.fail(name, value, expected)
        except (ValueError, ZeroDivisionError):
            self.fail(name, value, expected)
        if not 0 < number < 1:
            self.fail(name, value, expected)
        return [number.numerator, number.denominator]

    # -- structures -------------------------------------------------------------------------
    def object(self, name: str, default: Any = _MISSING) -> Args:
        """A nested object checked field by field (an absent optional object reads as {})."""
        value = self._take(name, {} if default is not _MISSING else _MISSING, "a JSON object")
        if not isinstance(value, dict):
            self.fail(name, value, "a JSON object")
        return Args(value, prefix=self.field(name) + ".")

    def opaque_object(self, name: str, default: Any = _MISSING) -> Any:
        """A JSON object stored as given (data schema, hyperparameters); the contract never interprets it."""
        value = self._take(name, default, "a JSON object")
        if not isinstance(value, dict):
            self.fail(name, value, "a JSON object")
        return value

    def mapping(
        self, name: str, *, key: Callable[[str, str], None], max_items: int = 1024
    ) -> dict[str, Any]:
        """A JSON object used as a map; ``key(field, k)`` checks each key."""
        value = self._take(name, _MISSING, "a JSON object")
        if not isinstance(value, dict) or len(value) > max_items:
            self.fail(name, value, f"a JSON object with at most {max_items} entries")
        for k in value:
            key(self.field(name), k)
        return value

    def list(self, name: str, *, min_items: int = 0, max_items: int = 1024) -> list[Any]:
        expected = f"a list of {min_items} to {max_items} items"
        value = self._take(name, _MISSING, expected)
        if not isinstance(value, list) or not min_items <= len(value) <= max_items:
            self.fail(name, value, expected)
        return value

    def item(self, name: str, index: int, value: Any) -> Args:
        """Element ``index`` of list ``name`` as an object."""
        if not isinstance(value, dict):
            self.fail(f"{name}[{index}]", value, "a JSON object")
        return Args(value, prefix=f"{self.field(name)}[{index}].")


def check_identifier_key(field: str, key: str) -> None:
    if not IDENTIFIER.fullmatch(key):
        expected = "keys that are identifiers (MSP ids)"
        raise ContractError(
            f"{field}: key {_show(key)} is not valid, expected {expected}",
            code="INVALID_ARGUMENT",
            detail={"field": field, "value": key, "expected": expected},
        )
