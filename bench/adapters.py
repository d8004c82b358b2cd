"""Create-if-absent and read, spoken to etcd (JSON gateway) and to Graven (proposer gateway,
or the in-process smart client): the targets of Graven's one load generator
(`graven.node.client.loadgen`, its `Target` protocol) in the comparison.

All targets take the same key and value strings and return the same `Decision`, so the load
generator cannot tell the systems apart. A non-2xx reply raises `BadStatus`. The plain adapters
send each request to the endpoint they are given, over one keep-alive session per row (made in
`open`); the smart target (`graven.node.client.loadgen.SmartTarget`) talks to all members itself.
"""

from __future__ import annotations

import base64
import zlib
from collections import Counter
from collections.abc import Callable, Sequence
from typing import ClassVar

import aiohttp
import orjson

from graven.node.client.core import Decision
from graven.node.client.loadgen import SmartTarget, Target

JSON_HEADERS = {"Content-Type": "application/json"}
REQUEST_TIMEOUT_S = 10.0


class BadStatus(aiohttp.ClientError):
    """The server answered with a non-2xx status."""


class _Plain:
    """What the adapters that speak to one given endpoint per call share."""

    name: ClassVar[str]

    def __init__(self) -> None:
        self._session: aiohttp.ClientSession | None = None

    @property
    def session(self) -> aiohttp.ClientSession:
        assert self._session is not None, "open() first"
        return self._session

    async def open(self, endpoints: Sequence[str]) -> None:
        timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S)
        connector = aiohttp.TCPConnector(limit=0, force_close=False)
        self._session = aiohttp.ClientSession(connector=connector, timeout=timeout)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def member_reader(self) -> Target:
        return self  # type: ignore[return-value]

    def paths(self) -> Counter[str] | None:
        return None


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


class EtcdAdapter(_Plain):
    """etcd v3 JSON gateway: one txn `if create_revision == 0 then put else range`."""

    name: ClassVar[str] = "etcd"

    async def create(self, endpoint: str, key: str, value: str) -> Decision:
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
        reply = await _call(self.session, "POST", endpoint + "/v3/kv/txn", body)
        assert reply is not None
        if reply.get("succeeded"):  # the gateway omits false booleans
            return Decision(key, value, True)
        kvs = reply["responses"][0]["response_range"].get("kvs", [])
        if not kvs:
            raise ValueError(f"etcd txn on {key}: compare failed but the key is absent")
        return Decision(key, _unb64(kvs[0].get("value", "")), False)

    async def read(self, endpoint: str, key: str) -> str | None:
        body = orjson.dumps({"key": _b64(key)})  # linearizable (serializable=false) by default
        reply = await _call(self.session, "POST", endpoint + "/v3/kv/range", body)
        assert reply is not None
        kvs = reply.get("kvs", [])
        return _unb64(kvs[0].get("value", "")) if kvs else None

    def route(self, key: str, endpoints: Sequence[str]) -> str | None:
        return None  # any member: etcd forwards proposals to its leader itself


class GravenAdapter(_Plain):
    """Graven proposer gateway: PUT/GET /v1/decisions/{key}."""

    name: ClassVar[str] = "graven"

    async def create(self, endpoint: str, key: str, value: str) -> Decision:
        body = orjson.dumps({"value": value})
        reply = await _call(self.session, "PUT", f"{endpoint}/v1/decisions/{key}", body)
        assert reply is not None
        return Decision(key, str(reply["value"]), bool(reply["won"]))

    async def read(self, endpoint: str, key: str) -> str | None:
        reply = await _call(
            self.session, "GET", f"{endpoint}/v1/decisions/{key}", None, ok_404=True
        )
        return None if reply is None else str(reply["value"])

    def route(self, key: str, endpoints: Sequence[str]) -> str | None:
        # The key's home member owns its first register set and decides it in one round trip
        # (graven.node.protocol.layout.Layout.home_slot; the specs here use one proposer slot per
        # member, listed in member order). graven.node.client routes the same way.
        return endpoints[zlib.crc32(key.encode()) % len(endpoints)]


ADAPTERS: dict[str, Callable[[], Target]] = {
    "etcd": EtcdAdapter,
    "graven": GravenAdapter,
    "graven-smart": lambda: SmartTarget(REQUEST_TIMEOUT_S, racing=False),
}
