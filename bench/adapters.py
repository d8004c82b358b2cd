"""Create-if-absent and read, spoken to etcd (JSON gateway) and to Graven (proposer gateway,
or the in-process smart client).

All adapters take the same key and value strings and return the same `Outcome`, so the load
generator cannot tell the systems apart. A non-2xx reply (or a smart-client error) raises
`BadStatus`.

Every call names a session and an endpoint; the plain adapters use them. `SmartGravenAdapter`
ignores both: one `graven.node.client.smart.SmartClient` per row (made in `open`, closed in
`close`) talks to all members itself, so `member_reader` gives the load generator a plain
adapter for the checks that must read one given member.
"""

from __future__ import annotations

import base64
import zlib
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar, Protocol

import aiohttp
import orjson

if TYPE_CHECKING:
    from graven.node.client.smart import SmartClient

JSON_HEADERS = {"Content-Type": "application/json"}


@dataclass(frozen=True)
class Outcome:
    won: bool  # this request's value was the one decided
    value: str  # the decided value


class BadStatus(aiohttp.ClientError):
    """The server answered with a non-2xx status."""


class Adapter(Protocol):
    name: ClassVar[str]

    async def open(self, endpoints: Sequence[str]) -> None:
        """Before the row's first request (the smart client is made here)."""
        ...

    async def close(self) -> None:
        """After the row's last request, also on error."""
        ...

    async def create(
        self, session: aiohttp.ClientSession, endpoint: str, key: str, value: str
    ) -> Outcome: ...

    async def read(self, session: aiohttp.ClientSession, endpoint: str, key: str) -> str | None: ...

    def route(self, key: str, endpoints: Sequence[str]) -> str | None:
        """The member a client that knows the system sends ``key`` to (None: any member)."""
        ...

    def member_reader(self) -> Adapter:
        """An adapter whose `read` asks exactly the endpoint it is given (re-read checks)."""
        ...

    def paths(self) -> Counter[str] | None:
        """Decisions so far by path ("fast", "gateway") when the client knows; else None."""
        ...


class _Plain:
    """What the adapters that speak to one given endpoint per call share."""

    async def open(self, endpoints: Sequence[str]) -> None:
        return None

    async def close(self) -> None:
        return None

    def member_reader(self) -> Adapter:
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


class GravenAdapter(_Plain):
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
        # member, listed in member order). graven.node.client.sync routes the same way.
        return endpoints[zlib.crc32(key.encode()) % len(endpoints)]


class SmartGravenAdapter:
    """Graven through ``SmartClient``: on a fast first set it writes every acceptor's register
    itself and decides in one round trip; otherwise (and on conflict) it uses the proposer
    gateway, routed to the key's home member. The endpoint of each call is ignored."""

    name: ClassVar[str] = "graven-smart"

    def __init__(self) -> None:
        self.client: SmartClient | None = None

    async def open(self, endpoints: Sequence[str]) -> None:
        from graven.node.client.smart import SmartClient  # only the smart rows need it

        self.client = SmartClient(list(endpoints))

    async def close(self) -> None:
        if self.client is not None:
            await self.client.close()

    async def create(
        self, session: aiohttp.ClientSession, endpoint: str, key: str, value: str
    ) -> Outcome:
        from graven.node.client.core import ClientError

        assert self.client is not None, "open() first"
        try:
            decision = await self.client.propose(key, value)
        except ClientError as exc:
            raise BadStatus(f"smart propose {key}: {exc}") from exc
        return Outcome(decision.won, decision.value)

    async def read(self, session: aiohttp.ClientSession, endpoint: str, key: str) -> str | None:
        from graven.node.client.core import ClientError

        assert self.client is not None, "open() first"
        try:
            return await self.client.get(key)
        except ClientError as exc:
            raise BadStatus(f"smart get {key}: {exc}") from exc

    def route(self, key: str, endpoints: Sequence[str]) -> str | None:
        return None  # unused: the client routes (and fans out) by itself

    def member_reader(self) -> Adapter:
        return GravenAdapter()

    def paths(self) -> Counter[str] | None:
        return None if self.client is None else Counter(self.client.stats)


ADAPTERS: dict[str, type[Adapter]] = {
    "etcd": EtcdAdapter,
    "graven": GravenAdapter,
    "graven-smart": SmartGravenAdapter,
}
