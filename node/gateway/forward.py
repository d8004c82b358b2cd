"""Handing a proposal to the key's home member (or, on a fast layout after a conflict on the
fast set, to its recovery member: the owner of its first client-restricted set).

On a layout whose first register set is client-restricted, only the key's *home* (the owner of
that set) can decide in one round trip; any other member first needs phase 1 on a set of its
own, and two members proposing the same key at once fence each other out (duelling proposers).
So a member that is not the home passes a client's proposal on to the home, as one PUT with the
``Graven-Forwarded`` header (the home never forwards it again), and answers with the home's
reply. When the home cannot answer in time (down, slow, refused, any error) the member proposes
itself: forwarding only ever saves work, it is never needed for a decision, and both proposing
at once is safe (the layout guarantees agreement, forwarding only avoids the duel).
"""

from __future__ import annotations

import ssl
from collections.abc import Callable
from urllib.parse import quote, urlsplit

import aiohttp
import orjson
from yarl import URL

from ..proposer.httpclient import PeerHttpClient

FORWARDED_HEADER = "Graven-Forwarded"
MAX_IN_FLIGHT = 128  # forwards at once (each holds a connection); beyond, propose locally


class Forwarder:
    def __init__(
        self,
        urls: list[str],
        self_name: str,
        session: Callable[[], aiohttp.ClientSession],
        tls: Callable[[], ssl.SSLContext] | None = None,
    ) -> None:
        self._urls = urls
        self._tls = tls  # the member's own certificates, for https members
        # PeerHttpClient for http, and for https when we have our certificates; else aiohttp
        self._plain = [urlsplit(url).scheme == "http" or tls is not None for url in urls]
        self._name = self_name
        self._header = f"{FORWARDED_HEADER}: {self_name}\r\n".encode()
        self._session = session  # for https members (aiohttp brings TLS)
        self._clients: dict[int, PeerHttpClient] = {}
        self.in_flight = 0

    async def propose(self, member: int, key: str, value: str, timeout: float) -> str | None:
        """The value the home decided, or None when it did not answer usably in time (or too
        many forwards are open already)."""
        if self.in_flight >= MAX_IN_FLIGHT:
            return None
        path = "/v1/decisions/" + quote(key.encode(), safe="")
        body = orjson.dumps({"value": value})
        self.in_flight += 1
        try:
            status, raw = await self._put(member, path, body, timeout)
            if status != 200:
                return None
            decided = orjson.loads(raw).get("value")
        except (OSError, TimeoutError, aiohttp.ClientError, orjson.JSONDecodeError, AttributeError):
            return None
        finally:
            self.in_flight -= 1
        return decided if isinstance(decided, str) else None

    async def _put(self, member: int, path: str, body: bytes, timeout: float) -> tuple[int, bytes]:
        url = self._urls[member]
        if self._plain[member]:
            client = self._clients.get(member)
            if client is None:
                tls = self._tls if urlsplit(url).scheme == "https" else None
                client = self._clients[member] = PeerHttpClient(url, tls)
            return await client.request("PUT", path, body, timeout, self._header)
        async with self._session().put(
            URL(url + path, encoded=True),  # encoded: keep %2F in the key as it is
            data=body,
            headers={"Content-Type": "application/json", FORWARDED_HEADER: self._name},
            timeout=aiohttp.ClientTimeout(total=timeout),
        ) as resp:
            return resp.status, await resp.read()

    def close(self) -> None:
        for client in self._clients.values():
            client.close()
