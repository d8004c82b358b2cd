"""Python clients of a Graven cluster.

``Client`` (blocking) and ``AsyncClient`` (aiohttp) talk to any member's client API with the
same failover and routing rules (``core``: one sans-I/O request plan); ``SmartClient``
(``smart``) decides keys of fast layouts in the caller's process. Nothing here imports the
server side (no aiohttp.web, no register store, no node metrics).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .core import ClientError, Decision, UnavailableError
from .sync import Client

if TYPE_CHECKING:
    from .aio import AsyncClient
    from .smart import SmartClient

__all__ = ["AsyncClient", "Client", "ClientError", "Decision", "SmartClient", "UnavailableError"]


def __getattr__(name: str) -> Any:
    # AsyncClient and SmartClient pull in aiohttp: import them only for callers that use them.
    if name == "AsyncClient":
        from .aio import AsyncClient

        return AsyncClient
    if name == "SmartClient":
        from .smart import SmartClient

        return SmartClient
    raise AttributeError(name)
