"""Serving one node until SIGTERM/SIGINT, then shutting down gracefully."""

from __future__ import annotations

import asyncio
import signal

from aiohttp import web

from ..clusterconfig import ClusterConfig
from ..storage import RegisterStore
from .app import Extension, create_app

SIGNALS = (signal.SIGTERM, signal.SIGINT)
SHUTDOWN_TIMEOUT = 10.0  # seconds in-flight requests get to finish after a stop signal


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
