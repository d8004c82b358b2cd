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
from ..storage import RegisterStore
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


def format_url(host: str, port: int) -> str:
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


async def serve(
    cfg: ClusterConfig,
    node_name: str,
    store: RegisterStore,
    host: str,
    port: int,
    extensions: tuple[Extension, ...] = (),
    stop: asyncio.Event | None = None,
) -> None:
    """Serve until ``stop`` is set or SIGTERM/SIGINT arrives; the caller closes ``store``."""
    app = create_app(cfg, node_name, store, extensions)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=SHUTDOWN_TIMEOUT)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port)
        try:
            await site.start()
        except OSError as exc:
            raise ListenError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
        url = format_url(*runner.addresses[0][:2])
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
