"""Serving one node until SIGTERM/SIGINT, then shutting down gracefully."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Callable, Coroutine
from typing import Any

from aiohttp import web

from ..cluster.config import ClusterConfig
from ..http.appkeys import Extension
from ..security.node import NodeSecurity
from ..storage import RegisterStore
from . import guard
from .app import create_app

SIGNALS = (signal.SIGTERM, signal.SIGINT)
SHUTDOWN_TIMEOUT = 10.0  # seconds in-flight requests get to finish after a stop signal
LOOP_ENV = "GRAVEN_EVENT_LOOP"  # "asyncio" forces the standard loop (default: uvloop if present)


def loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's loop when it is installed and not switched off, else None (the standard one).

    Why: with uvloop a node spent 10-20% less CPU per decision in bench/compare.py
    (3 members, c=1..64) and decided that much more per second on the same two cores.
    """
    if os.environ.get(LOOP_ENV, "").strip().lower() == "asyncio":
        return None
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


def run_node(main: Coroutine[Any, Any, None]) -> None:
    """``asyncio.run`` on the loop ``loop_factory`` picks (what ``graven node`` runs on)."""
    with asyncio.Runner(loop_factory=loop_factory()) as runner:
        runner.run(main)


class ListenError(Exception):
    """The listening socket could not be opened (port in use, bad address)."""


def format_url(host: str, port: int, scheme: str = "http") -> str:
    return f"{scheme}://[{host}]:{port}" if ":" in host else f"{scheme}://{host}:{port}"


async def serve(
    cfg: ClusterConfig,
    node_name: str,
    store: RegisterStore,
    host: str,
    port: int,
    extensions: tuple[Extension, ...] = (),
    stop: asyncio.Event | None = None,
    security: NodeSecurity | None = None,
) -> None:
    """Serve until ``stop`` is set or SIGTERM/SIGINT arrives; the caller closes ``store``.

    ``security``: TLS and the access policy (None: plain http, everyone allowed)."""
    policy = security.policy if security is not None else None
    app = create_app(cfg, node_name, store, extensions, policy)
    limits = guard.ConnectionGuard()
    app.middlewares.insert(0, limits.middleware)  # outermost: sees every request's start
    runner = web.AppRunner(
        app,
        access_log=None,
        shutdown_timeout=SHUTDOWN_TIMEOUT,
        keepalive_timeout=guard.HEAD_TIMEOUT,
        **guard.HANDLER_LIMITS,
    )
    await runner.setup()
    # bounded connections and request heads: wrap the protocol factory the sites listen with
    # (aiohttp has no public hook for it)
    limits.wrap(runner.server)
    runner._server = limits  # type: ignore[assignment]
    try:
        ssl_context = security.server.context if security is not None else None
        site = web.TCPSite(runner, host, port, ssl_context=ssl_context)
        try:
            await site.start()
        except OSError as exc:
            raise ListenError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
        url = format_url(*runner.addresses[0][:2], "https" if security is not None else "http")
        print(f"graven node {node_name} listening on {url}", flush=True)  # contract line
        if stop is None:
            stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in SIGNALS:
            loop.add_signal_handler(sig, stop.set)
        try:
            await stop.wait()
        finally:
            for sig in SIGNALS:
                loop.remove_signal_handler(sig)
    finally:
        await runner.cleanup()  # stops listening, lets in-flight requests finish
