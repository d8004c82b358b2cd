"""Checks for the peer API's request bodies and query strings.

Everything is validated before anything is decided, so a bad item anywhere in a batch rejects
the whole request and changes nothing.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..cluster.config import Limits
from .errors import ApiError, invalid

MAX_RS = 1 << 62  # register-set ids are below 2**62 (epoch in the high bits)
MAX_ITEMS = 10_000
DEFAULT_PAGE = 100


@dataclass(frozen=True, slots=True)
class WriteItem:
    key: str
    rs: int
    value: str


def fields(body: Any, where: str, required: set[str]) -> Mapping[str, Any]:
    """``body`` as a mapping holding every required field and nothing unknown."""
    if not isinstance(body, Mapping):
        raise invalid(where, f"expected a JSON object, got {type_name(body)}")
    unknown = sorted(str(k) for k in body if k not in required)
    if unknown:
        raise invalid(where, f"unknown field(s) {', '.join(unknown)}")
    missing = sorted(required - set(body))
    if missing:
        raise invalid(where, f"missing field(s) {', '.join(missing)}")
    return body


def register_set(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise invalid(where, f"expected an integer register set, got {type_name(value)}")
    if not 0 <= value < MAX_RS:
        raise invalid(where, f"register set must be in 0..2**62-1, got {value}")
    return value


def key(value: Any, where: str, limits: Limits) -> str:
    if not isinstance(value, str):
        raise invalid(where, f"expected a string key, got {type_name(value)}")
    if not value:
        raise invalid(where, "a key must not be empty")
    if "\x00" in value:
        raise invalid(where, "a key must not contain NUL characters")
    too_long = invalid(where, f"a key is at most {limits.max_key_bytes} UTF-8 bytes")
    if len(value) > limits.max_key_bytes:
        raise too_long  # before encoding: a huge string costs nothing to refuse
    try:
        encoded = value.encode("utf-8")  # strict: lone surrogates (from a query string) fail
    except UnicodeEncodeError:
        raise invalid(where, "a key must be valid Unicode text") from None
    if len(encoded) > limits.max_key_bytes:
        raise too_long
    return value


def value_text(value: Any, where: str, limits: Limits) -> str:
    if not isinstance(value, str):
        raise invalid(where, f"expected a string value, got {type_name(value)}")
    if _utf8_len_over(value, limits.max_value_bytes):
        raise ApiError(
            413, "value_too_large", f"{where}: a value is at most {limits.max_value_bytes} bytes"
        )
    return value


def array(value: Any, where: str) -> list[Any]:
    if not isinstance(value, list):
        raise invalid(where, f"expected an array, got {type_name(value)}")
    if len(value) > MAX_ITEMS:
        raise invalid(where, f"at most {MAX_ITEMS} items per request, got {len(value)}")
    return value


def parse_read(body: Any, limits: Limits) -> list[tuple[str, int]]:
    """``{"rs", "keys"}`` (one set for every key) or ``{"reads": [{"key", "rs"}]}``.

    The second form lets a proposer gateway put phase-1 reads and peeks of many keys, each at
    its own register set, into one request.
    """
    if isinstance(body, Mapping) and "reads" in body:
        req = fields(body, "body", {"reads"})
        items = []
        for i, raw in enumerate(array(req["reads"], "reads")):
            where = f"reads[{i}]"
            item = fields(raw, where, {"key", "rs"})
            items.append(
                (key(item["key"], f"{where}.key", limits), register_set(item["rs"], f"{where}.rs"))
            )
        return items
    req = fields(body, "body", {"rs", "keys"})
    rs = register_set(req["rs"], "rs")
    keys = [key(k, f"keys[{i}]", limits) for i, k in enumerate(array(req["keys"], "keys"))]
    return [(k, rs) for k in keys]


def parse_write(body: Any, limits: Limits) -> list[WriteItem]:
    req = fields(body, "body", {"writes"})
    items = []
    for i, raw in enumerate(array(req["writes"], "writes")):
        where = f"writes[{i}]"
        item = fields(raw, where, {"key", "rs", "value"})
        items.append(
            WriteItem(
                key(item["key"], f"{where}.key", limits),
                register_set(item["rs"], f"{where}.rs"),
                value_text(item["value"], f"{where}.value", limits),
            )
        )
    return items


def parse_fence(body: Any) -> int:
    return register_set(fields(body, "body", {"rs"})["rs"], "rs")


@dataclass(frozen=True, slots=True)
class KeysQuery:
    after: str | None
    limit: int
    below: int | None


def parse_keys_query(query: Mapping[str, str], raw_keys: list[str], limits: Limits) -> KeysQuery:
    """``?after=KEY&limit=N&below=RS``; ``raw_keys`` lists every name given (to spot repeats)."""
    allowed = {"after", "limit", "below"}
    for name in raw_keys:
        if name not in allowed:
            raise invalid("query", f"unknown parameter {name!r}")
        if raw_keys.count(name) > 1:
            raise invalid("query", f"parameter {name!r} given more than once")
    after = key(query["after"], "after", limits) if query.get("after") else None  # "": start
    limit = _query_int(query.get("limit"), "limit", DEFAULT_PAGE)
    if not 1 <= limit <= MAX_ITEMS:
        raise invalid("limit", f"must be between 1 and {MAX_ITEMS}, got {limit}")
    below = None
    if "below" in query:
        below = register_set(_query_int(query["below"], "below", 0), "below")
    return KeysQuery(after, limit, below)


def _query_int(text: str | None, where: str, default: int) -> int:
    if text is None:
        return default
    if not text.isascii() or not text.isdigit() or len(text) > 19:
        raise invalid(where, f"expected a non-negative integer, got {text!r}")
    return int(text)


def _utf8_len_over(text: str, limit: int) -> bool:
    # Cheap bounds first: a str of n code points has between n and 4n UTF-8 bytes.
    if len(text) > limit:
        return True
    if len(text) * 4 <= limit:
        return False
    return len(text.encode("utf-8", "surrogatepass")) > limit  # JSON text has no lone surrogates


def type_name(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, Mapping):
        return "an object"
    return type(value).__name__
