"""What the proposer runtime asks of its host, and how a request ended.

The runtime (``runtime.py``) never touches a network, a clock or a disk. Its host (the node's
gateway, the smart client, the simulator) feeds it events and carries out these effects, in the
order given:

* ``Send``: one message to one member's acceptor; report ``on_reply`` or ``on_send_failed``;
* ``PersistFloor``: durably record that this proposer used register set ``rs`` for ``key``;
  report ``on_floor_durable`` or ``on_floor_failed``. The runtime already emitted the message
  to this node's own acceptor (``local``) that needs that floor: submit the floor first and
  that message in the same turn, so both become durable together (the store commits in
  submission order). Messages to other members stay inside the runtime until the floor is
  durable;
* ``Forward``: hand the request to member ``member`` (the key's leader); report
  ``on_forwarded`` with the decided value, or None when it did not answer usably;
* ``Cancel``: drop whatever is still queued for the request (its fast attempt ended);
* ``Done``: the request's outcome; drop whatever is still queued for it.

Effects are plain (not frozen) slotted dataclasses: several are made per request on the hot
path and frozen ones cost four times as much to build. Treat them as read-only.
"""

from __future__ import annotations

from dataclasses import dataclass

from .proposer import Read, Write
from .quorums import Mask

# Outcome statuses.
DECIDED = "decided"  # ``value`` is decided for the key
NOT_DECIDED = "not-decided"  # a read: nothing was decided before the read began
HANDED_OVER = "handed-over"  # a client's fast attempt did not decide: ask a gateway
UNREACHABLE = "unreachable"  # too few members answer to form the layout's quorums
DEADLINE = "deadline"  # the request deadline passed; the outcome is unknown
NO_SLOT = "no-slot"  # this member owns no proposer slot and could not hand the key over
STORE_FAILED = "store-failed"  # the used-set floor could not be made durable
STALE = "stale"  # a member showed a newer epoch than this runtime's view: fetch it, retry


@dataclass(slots=True)
class Timing:
    """Delays the runtime schedules, in the host's time unit (seconds on a node)."""

    attempt_timeout: float = 1.0  # one register set (or a fast attempt, or a forward) at most
    backoff_first: float = 0.005  # first retry delay after a conflict; doubles, jittered
    backoff_max: float = 0.25
    candidate_grace: float = 0.05  # a read with a candidate waits this long for more replies


@dataclass(slots=True)
class Send:
    tid: int
    member: int
    message: Read | Write


@dataclass(slots=True)
class PersistFloor:
    tid: int
    key: str
    rs: int


@dataclass(slots=True)
class Forward:
    tid: int
    member: int
    key: str
    value: str
    timeout: float


@dataclass(slots=True)
class Cancel:
    tid: int


@dataclass(slots=True)
class Outcome:
    status: str
    value: str | None = None
    # How this request's own proposer decided (fast | classic | recovered | read), for metrics;
    # None when the value was learnt instead (forwarded, or another request for the key).
    path: str | None = None
    missing: Mask = 0  # UNREACHABLE/DEADLINE: members not answering; HANDED_OVER: silent ones
    detail: str = ""  # DEADLINE: where the request stood
    error: object = None  # STORE_FAILED: the host's own exception, handed back as is
    attempts: int = 0  # register sets this request's proposer tried
    conflicts: int = 0
    round_trips: int = 0


@dataclass(slots=True)
class Done:
    tid: int
    outcome: Outcome


Effect = Send | PersistFloor | Forward | Cancel | Done
