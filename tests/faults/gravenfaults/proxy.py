"""A TCP proxy that delays and reorders: this kernel has no netem qdisc, so delay lives here.

Runs in a member's namespace in front of its node (an iptables REDIRECT sends every inbound
connection to the node's port here). Each chunk read is given a due time ``now + U(lo, hi)``;
within one connection chunks keep their order (a chunk is never due before the previous one),
so the byte stream stays intact, while chunks of different connections overtake each other:
requests sent in one order arrive in another. ``kill -HUP`` re-reads the control file
(``{"delay_ms": [lo, hi]}``; ``[0, 0]`` passes bytes straight through).

    python -m gravenfaults.proxy --listen 0.0.0.0:7101 --to 127.0.0.1:7100 --control FILE
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import signal
import time
from pathlib import Path

CHUNK = 65536


class Delay:
    def __init__(self, control: Path) -> None:
        self.control = control
        self.lo = self.hi = 0.0
        self.reload()

    def reload(self) -> None:
        try:
            doc = json.loads(self.control.read_text())
            lo, hi = (float(x) / 1000.0 for x in doc.get("delay_ms", [0, 0]))
        except (OSError, ValueError, TypeError):
            lo = hi = 0.0
        self.lo, self.hi = max(0.0, lo), max(lo, hi)

    def due(self, previous: float) -> float:
        if self.hi <= 0:
            return previous
        return max(previous, time.monotonic() + random.uniform(self.lo, self.hi))


async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, delay: Delay) -> None:
    queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

    async def pump() -> None:
        last = 0.0
        while True:
            data = await reader.read(CHUNK)
            last = delay.due(last)
            await queue.put((last, data))
            if not data:
                return

    task = asyncio.create_task(pump())
    try:
        while True:
            due, data = await queue.get()
            wait = due - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            if not data:
                with contextlib.suppress(OSError):
                    writer.write_eof()
                return
            writer.write(data)
            await writer.drain()
    finally:
        task.cancel()
        with contextlib.suppress(BaseException):
            await task


async def serve(listen: tuple[str, int], target: tuple[str, int], delay: Delay) -> None:
    async def handle(cr: asyncio.StreamReader, cw: asyncio.StreamWriter) -> None:
        try:
            ur, uw = await asyncio.open_connection(*target)
        except OSError:
            cw.close()
            return
        try:
            await asyncio.gather(pipe(cr, uw, delay), pipe(ur, cw, delay))
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            for w in (cw, uw):
                w.close()

    server = await asyncio.start_server(handle, *listen, reuse_address=True)
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGHUP, delay.reload)
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    print(f"proxy listening on {listen[0]}:{listen[1]}", flush=True)
    async with server:
        await stop.wait()


def hostport(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host, int(port)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--listen", required=True)
    parser.add_argument("--to", required=True)
    parser.add_argument("--control", required=True, type=Path)
    args = parser.parse_args()
    try:
        import uvloop

        runner = asyncio.Runner(loop_factory=uvloop.new_event_loop)
    except ImportError:
        runner = asyncio.Runner()
    with runner:
        runner.run(serve(hostport(args.listen), hostport(args.to), Delay(args.control)))


if __name__ == "__main__":
    main()
