"""Driving a reconfiguration of running members over HTTP: the orchestrator's host.

The orchestrator (``protocol.reconfig``) decides every step; this host carries its actions out
against real members. ``graven up`` and the operator both run it; they differ only in where
the master's record is kept (``RecordStore``: a file, a Kubernetes object) and in the
credentials members ask for (``MemberCalls``). The record is saved before the next action, so
a SIGKILLed host resumes where it was:

* ``Save``: the store gets {record, the old and the target configuration documents};
* ``Publish``: the configuration document for those live epochs is handed to ``publish``
  (the caller writes it where a member that starts reads it — the local config file, the
  ConfigMap — and starts the members that do not run yet, returning once they answer), then
  pushed to every member of its live epochs with ``POST /v1/admin/config`` (``server.live``:
  each installs it durably and serves it at once, no restart). A member that fails is retried
  with the next round (a re-install of the same document is a no-op), so the step is resumable;
  once all have it, ``settle`` (if given) may stop members that are in no live epoch;
* ``Fence``: ``POST /v1/registers/fence`` on the member; ``ListKeys``: ``GET
  /v1/registers/keys?below=RS``; ``Carry``: ``POST /v1/admin/carry`` on a member of the new
  epoch, many keys per request.
"""

from __future__ import annotations

import json
import ssl
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from ..protocol import reconfig as rc
from ..protocol.epochs import Epoch
from .config import ClusterConfig, dump, parse

HTTP_TIMEOUT = 10.0
RETRY_DELAY = 0.2  # seconds before re-sending what failed
MAX_ROUNDS = 100_000  # a bound on the driver's loop, far above any real transition


class ReconfigureError(Exception):
    """A transition that cannot start or go on (one line for the user)."""


def _epoch(cfg: ClusterConfig) -> Epoch:
    return Epoch(cfg.epoch, tuple(m.name for m in cfg.members), cfg.layout)


def document(old: ClusterConfig, target: ClusterConfig, epochs: tuple[Epoch, ...]) -> dict:
    """The cluster document for these live epochs (the newest is ``target`` or ``old``)."""
    newest = max(e.number for e in epochs)
    base = dump(target if newest == target.epoch else old)
    if len(epochs) > 1:
        older = [e for e in epochs if e.number < newest]
        assert [e.number for e in older] == [old.epoch], "one older live epoch at a time"
        base["previous"] = [
            {
                "epoch": old.epoch,
                "members": [{"name": m.name, "url": m.url} for m in old.members],
                "quorums": dict(old.layout.to_spec()),
            }
        ]
    return base


class RecordStore(Protocol):
    """Where the master's record of one transition lives (written before the next action)."""

    def load(self) -> Mapping[str, Any] | None: ...

    def save(self, state: Mapping[str, Any]) -> None: ...


@dataclass(frozen=True)
class MemberCalls:
    """HTTP calls to members, with what they ask of an administrator: the CA that signed
    their certificates, a client certificate and/or a bearer token with the admin role."""

    ssl_context: ssl.SSLContext | None = None
    token: str | None = None
    timeout: float = HTTP_TIMEOUT

    def __call__(self, method: str, url: str, body: Any = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(url, data=data, method=method)
        req.add_header("Content-Type", "application/json")
        if self.token is not None:
            req.add_header("Authorization", f"Bearer {self.token}")
        with urllib.request.urlopen(req, timeout=self.timeout, context=self.ssl_context) as resp:
            return json.loads(resp.read() or b"null")


class Driver:
    """One transition from ``old`` (a single live epoch) to ``target`` (epoch old + 1)."""

    def __init__(
        self,
        store: RecordStore,
        old: ClusterConfig,
        target: ClusterConfig,
        publish: Callable[[dict], None],
        record: rc.Record | None = None,
        batch: int = rc.DEFAULT_BATCH,
        progress: Callable[[rc.Record], None] | None = None,
        call: MemberCalls = MemberCalls(),
        note: Callable[[str], None] | None = None,
        settle: Callable[[dict], None] | None = None,
    ) -> None:
        """``note``: told why a carry-over item failed (it is retried; a failure that lasts
        must be visible to the user, not only in the orchestrator's memory)."""
        if target.epoch != old.epoch + 1:
            raise ReconfigureError(f"the target epoch must be {old.epoch + 1}, got {target.epoch}")
        if record is None:
            why = rc.refusal([_epoch(old)], _epoch(target))
            if why is not None:
                raise ReconfigureError(why)
        self.store = store
        self.call = call
        self.old, self.target = old, target
        self.publish = publish
        self.settle = settle
        self.progress = progress
        self.note = note
        self.urls = {m.name: m.url for m in old.members}
        self.urls.update({m.name: m.url for m in target.members})
        self.orch = rc.Orchestrator([_epoch(old)], _epoch(target), record, batch=batch)
        self.carried_keys = 0

    @classmethod
    def resume(
        cls, store: RecordStore, publish: Callable[[dict], None], **kw: Any
    ) -> Driver | None:
        """The driver of an unfinished transition recorded in ``store`` (None: none)."""
        state = store.load()
        if state is None:
            return None
        record = rc.Record.from_dict(state["record"])
        if record.step == rc.DONE:
            return None
        return cls(store, parse(state["old"]), parse(state["target"]), publish, record, **kw)

    # -- running ---------------------------------------------------------------------------------

    def run(self, deadline: float | None = None) -> rc.Record:
        orch = self.orch
        actions = orch.start()
        for _ in range(MAX_ROUNDS):
            if orch.done and not actions:  # the last Save (step done) carried out too
                return orch.record
            if deadline is not None and time.monotonic() > deadline:
                raise ReconfigureError(
                    f"not finished in time: at step {orch.step} ({orch.record.last_error})"
                )
            if not actions:
                time.sleep(RETRY_DELAY)
                actions = orch.retry()
                continue
            actions = self._carry_out(actions)
        raise ReconfigureError(f"gave up at step {orch.step}: {orch.record.last_error}")

    def _carry_out(self, actions: list[rc.Action]) -> list[rc.Action]:
        orch = self.orch
        out: list[rc.Action] = []
        carries: list[rc.Carry] = []
        for action in actions:
            if isinstance(action, rc.Save):
                self.store.save(
                    {
                        "record": action.record.to_dict(),
                        "old": dump(self.old),
                        "target": dump(self.target),
                    },
                )
                if self.progress is not None:
                    self.progress(action.record)
            elif isinstance(action, rc.Publish):
                doc = document(self.old, self.target, action.epochs)
                try:
                    self.publish(doc)
                    self._push(doc)
                    if self.settle is not None:
                        self.settle(doc)
                except Exception as exc:  # the caller's failure is reported and retried
                    out += orch.on_publish_failed(action.epochs, str(exc))
                else:
                    out += orch.on_published(action.epochs)
            elif isinstance(action, rc.Fence):
                try:
                    self.call(
                        "POST", f"{self.urls[action.member]}/v1/registers/fence", {"rs": action.rs}
                    )
                except (OSError, ValueError) as exc:
                    out += orch.on_fence_failed(action.member, _reason(exc))
                else:
                    out += orch.on_fenced(action.member)
            elif isinstance(action, rc.ListKeys):
                out += self._list(action)
            elif isinstance(action, rc.Carry):
                carries.append(action)
        if carries:
            out += self._carry(carries)
        return out

    def _push(self, doc: dict) -> None:
        """Every member of the document's live epochs installs it (one at a time: each swaps
        its proposer while the others serve); raises naming those that did not."""
        errors = []
        for member in parse(doc).live_members():
            try:
                self.call("POST", f"{member.url}/v1/admin/config", doc)
            except (OSError, ValueError) as exc:
                errors.append(f"{member.name}: {_reason(exc)}")
        if errors:
            raise ReconfigureError("not installed on " + "; ".join(errors))

    def _list(self, action: rc.ListKeys) -> list[rc.Action]:
        url = f"{self.urls[action.member]}/v1/registers/keys?below={action.below}&limit=1000"
        if action.after is not None:
            url += "&after=" + urllib.request.quote(action.after, safe="")
        try:
            page = self.call("GET", url)
        except (OSError, ValueError) as exc:
            return self.orch.on_list_failed(action.member, action.after, _reason(exc))
        keys = {
            item["key"]: {int(rs): v for rs, v in item["values"].items()} for item in page["keys"]
        }
        return self.orch.on_keys(action.member, keys, page.get("next"))

    def _carry(self, carries: list[rc.Carry]) -> list[rc.Action]:
        """All of a batch in one request to a member of the new epoch (the next one on a
        failure)."""
        orch = self.orch
        body = {"items": [{"key": c.key, "value": c.value} for c in carries]}
        errors = []
        for member in self.target.members:
            try:
                reply = self.call("POST", f"{member.url}/v1/admin/carry", body)
            except (OSError, ValueError) as exc:
                errors.append(f"{member.name}: {_reason(exc)}")
                continue
            out: list[rc.Action] = []
            for item in reply["results"]:
                if "error" in item:
                    message = item["error"]["message"]
                    if self.note is not None:
                        self.note(f"{member.name}: carrying {item['key']!r}: {message}")
                    out += orch.on_carry_failed(item["key"], message)
                else:
                    self.carried_keys += 1
                    out += orch.on_carried(item["key"])
            return out
        out = []
        for c in carries:
            out += orch.on_carry_failed(c.key, "; ".join(errors))
        return out


def _reason(exc: BaseException) -> str:
    if isinstance(exc, urllib.error.HTTPError):
        try:
            return json.loads(exc.read())["error"]["message"]
        except (ValueError, KeyError, TypeError):
            return f"HTTP {exc.code}"
    return str(getattr(exc, "reason", exc))
