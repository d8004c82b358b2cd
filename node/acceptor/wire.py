"""The JSON form of an acceptor's reply about one key, shared by the node and its clients.

``{"key": K, "ok": bool, "fence": F, "values": {"<rs>": value, ...}}``. JSON object keys are
strings, so register-set ids travel as decimal strings. Registers below ``fence`` that are not
listed are nil; registers at or above it that are not listed are unwritten.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..protocol.acceptor import Reply


def reply_to_json(key: str, reply: Reply) -> dict[str, Any]:
    return {
        "key": key,
        "ok": reply.ok,
        "fence": reply.fence,
        "values": {str(rs): value for rs, value in reply.values.items()},
    }


def reply_from_json(item: Mapping[str, Any]) -> tuple[str, Reply]:
    """Inverse of ``reply_to_json`` (for proposers talking to a node); trusts the node."""
    values = {int(rs): value for rs, value in item["values"].items()}
    return item["key"], Reply(bool(item["ok"]), int(item["fence"]), values)
