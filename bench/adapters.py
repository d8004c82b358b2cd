"""Create-if-absent and read, spoken to etcd (JSON gateway) and to Graven (proposer gateway).

Both adapters take the same key and value strings and return the same `Outcome`, so the load
generator cannot tell the systems apart. A non-2xx reply raises `BadStatus`.
"""

from __future__ import annotations

import base64
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar, Protocol

import aiohttp
import orjson

JSON_HEADERS = {"Content-Type": "application/json"}


@dataclass(frozen=True)
class Outcome:
    won: bool  # this request's value was the one decided
    value: str  # the decided value


class BadStatus(aiohttp.ClientError):
    """The server answered with a non-2xx status."""


class Adapter(Protocol):
    name: ClassVar[str]

    async def create(
        self, session: aiohttp.ClientSession, endpoint: str, key: str, value: str
    ) -> Outcome: ...

    async def read(self, session: aiohttp.ClientSession, endpoint: str, key: str) -> str | None: ...

    def route(self, key: str, endpoints: Sequence[str]) -> str | None:
        """The member a client that knows the system sends ``key`` to (None: any member)."""
        ...


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode("ascii")


def _unb64(text: str) -> str:
    return base64.b64decode(text).decode()


async def _call(
    session: aiohttp.ClientSession, method: str, url: str, body: bytes | None, ok_404: bool = False
) -> dict | None:
    """One request; the parsed JSON reply, or None for an allowed 404."""
    async with session.request(method, url, data=body, headers=JSON_HEADERS) as resp:
        raw = await resp.read()
        if ok_404 and resp.status == 404:
            return None
        if not 200 <= resp.status < 300:
            raise BadStatus(f"{method} {url} -> HTTP {resp.status}: {raw[:120]!r}")
    return orjson.loads(raw)


class EtcdAdapter:
    """etcd v3 JSON gateway: one txn `if create_revision == 0 then put else range`."""

    name: ClassVar[str] = "etcd"

    async def create(
        self, session: aiohttp.ClientSession, endpoint: str, key: str, value: str
    ) -> Outcome:
        k = _b64(key)
        body = orjson.dumps(
            {
                "compare": [
                    {"key": k, "result": "EQUAL", "target": "CREATE", "create_revision": "0"}
                ],
                "success": [{"request_put": {"key": k, "value": _b64(value)}}],
                "failure": [{"request_range": {"key": k}}],
            }
        )
        reply = await _call(session, "POST", endpoint + "/v3/kv/txn", body)
        assert reply is not None
        if reply.get("succeeded"):  # the gateway omits false booleans
            return Outcome(True, value)
        kvs = reply["responses"][0]["response_range"].get("kvs", [])
        if not kvs:
            raise ValueError(f"etcd txn on {key}: compare failed but the key is absent")
        return Outcome(False, _unb64(kvs[0].get("value", "")))

    async def read(self, session: aiohttp.ClientSession, endpoint: str, key: str) -> str | None:
        body = orjson.dumps({"key": _b64(key)})  # linearizable (serializable=false) by default
        reply = await _call(session, "POST", endpoint + "/v3/kv/range", body)
        assert reply is not None
        kvs = reply.get("kvs", [])
        return _unb64(kvs[0].get("value", "")) if kvs else None

    def route(self, key: str, endpoints: Sequence[str]) -> str | None:
        return None  # any member: etcd forwards proposals to its leader itself


class GravenAdapter:
    """Graven proposer gateway: PUT/GET /v1/decisions/{key}."""

    name: ClassVar[str] = "graven"

    async def create(
        self, session: aiohttp.ClientSession, endpoint: str, key: str, value: str
    ) -> Outcome:
        body = orjson.dumps({"value": value})
        reply = await _call(session, "PUT", f"{endpoint}/v1/decisions/{key}", body)
        assert reply is not None
        return Outcome(bool(reply["won"]), str(reply["value"]))

    async def read(self, session: aiohttp.ClientSession, endpoint: str, key: str) -> str | None:
        reply = await _call(session, "GET", f"{endpoint}/v1/decisions/{key}", None, ok_404=True)
        return None if reply is None else str(reply["value"])

    def route(self, key: str, endpoints: Sequence[str]) -> str | None:
        # The key's home member owns its first register set and decides it in one round trip
        # (graven.node.protocol.config.home_slot; the specs here use one proposer slot per
        # member, listed in member order). graven.node.client routes the same way.
        return endpoints[zlib.crc32(key.encode()) % len(endpoints)]


ADAPTERS: dict[str, type[Adapter]] = {"etcd": EtcdAdapter, "graven": GravenAdapter}
