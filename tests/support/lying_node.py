"""`graven node` over a register store that lies: a test double, never part of the product.

It acknowledges every change as soon as it is submitted, writes the batch 0.2 s later and
without fsync. The crash test runs it to show that its check notices lost acknowledged writes.
Run as a script (``python tests/support/lying_node.py node --id ...``): it patches the store in
its own process only, then runs the ordinary command.
"""

from __future__ import annotations

import asyncio
import sys
import time
from typing import Any

from graven.node.cli import main
from graven.node.storage import store as store_module
from graven.node.storage import writer as writer_module

DELAY = 0.2  # seconds an acknowledged batch waits before it is even written


def _done() -> asyncio.Future[None]:
    future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    future.set_result(None)
    return future


def install() -> None:
    open_db, connect = store_module.open_db, store_module.connect
    store_module.open_db = lambda *a, **kw: open_db(*a, **{**kw, "synchronous": "OFF"})
    store_module.connect = lambda *a, **kw: connect(*a, **{**kw, "synchronous": "OFF"})

    writer = writer_module.CommitWriter
    commit = writer._commit

    def late_commit(self: Any, batch: Any, inline: bool = False) -> None:
        time.sleep(DELAY)  # on the writer thread: inline commits are turned off below
        commit(self, batch, inline)

    writer._commit = late_commit  # type: ignore[method-assign]
    writer.commit_inline = lambda self, pending: False  # type: ignore[method-assign]

    store = store_module.RegisterStore
    enqueue = store._enqueue

    def acked_at_once(self: Any, ops: Any) -> asyncio.Future[None]:
        enqueue(self, ops)  # still written, later
        return _done()  # the lie: acknowledged before anything is written

    store._enqueue = acked_at_once  # type: ignore[method-assign]
    store.barrier = lambda self: _done()  # type: ignore[method-assign]
    print("lying_node: WARNING: acknowledging before durable", file=sys.stderr)


if __name__ == "__main__":
    install()
    sys.exit(main())
