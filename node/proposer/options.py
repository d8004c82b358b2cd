"""Options and failure outcomes shared by the proposer runtime and the client API."""

from __future__ import annotations

import ssl
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class GatewayOptions:
    attempt_timeout: float = 1.0  # seconds before an attempt (one register set) is given up
    request_deadline: float = 5.0  # seconds a client request may take in all (then 504)
    backoff_first: float = 0.005  # first retry delay after a conflict; doubles, jittered
    backoff_max: float = 0.25
    max_in_flight_per_member: int = 3  # concurrent batched requests to one acceptor
    cache_bytes: int = 64 << 20  # decided values kept in memory
    # TLS context source for calls to https members (this member's certificate; None: http)
    tls: Callable[[], ssl.SSLContext] | None = None

    def __post_init__(self) -> None:
        if not 0 < self.attempt_timeout <= 60:
            raise ValueError(f"attempt timeout must be in (0, 60] seconds: {self.attempt_timeout}")
        if not 0 < self.request_deadline <= 600:
            raise ValueError(
                f"request deadline must be in (0, 600] seconds: {self.request_deadline}"
            )
        if not 1 <= self.max_in_flight_per_member <= 64:
            raise ValueError("max in-flight requests per member must be in 1..64")

    @property
    def rpc_timeout(self) -> float:
        """How long one request to an acceptor may take before the member counts as down.

        Longer than an attempt, so a slow (overloaded) member is not declared down at once,
        but well within the deadline, so lost members still give 503 rather than 504.
        """
        return min(2 * self.attempt_timeout, self.request_deadline / 2)


class QuorumUnreachable(Exception):
    """Too few members answer to form a phase-1 and a phase-2 quorum (503)."""

    def __init__(self, unreachable: str) -> None:
        super().__init__(
            f"quorum unreachable: this node cannot reach enough members to decide; "
            f"unreachable: {unreachable or 'none reported'}"
        )


class DeadlineExceeded(Exception):
    """The request deadline passed before a decision (504); the outcome is unknown."""


class NoProposerSlot(Exception):
    """This member has no proposer slot in the layout (``proposers`` < members)."""


class StaleConfiguration(Exception):
    """A member knows a newer configuration than this node (503): the node's proposals stop
    rather than write a register set of an epoch they do not know; retry once it has it."""
