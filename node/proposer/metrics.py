"""Prometheus series of a proposer: the node's gateway and the smart client both keep them.

The metric names and labels are a contract with the dashboard and alert rules: change them only
together. The caller owns the registry (the node's app registry, or the smart client's own).
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096, 16384)
DECISION_PATHS = ("fast", "classic", "recovered", "read")
DECISION_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
RPC_BUCKETS = (0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)
COUNT_BUCKETS = (1, 2, 3, 4, 5, 6, 8, 10, 16, 32)


class ProposerMetrics:
    """The proposer gateway's series, in the node's registry (names are a contract)."""

    def __init__(
        self,
        registry: CollectorRegistry,
        members: list[str],
        member_up: Callable[[int], bool],
        quorum_margin: Callable[[], int],
    ) -> None:
        r = registry
        self.decisions = Counter(
            "graven_decisions",
            "Decisions learned by this node's proposer, by path.",
            ["path"],
            registry=r,
        )
        # labelled children resolved once: ``labels()`` costs a validation and a lock per call
        self.decided_by_path = {path: self.decisions.labels(path) for path in DECISION_PATHS}
        self.duration = Histogram(
            "graven_decision_duration_seconds",
            "Time from the start of a proposal to its decision.",
            buckets=DECISION_BUCKETS,
            registry=r,
        )
        self.round_trips = Histogram(
            "graven_decision_round_trips",
            "Acceptor round trips (phase 1 or phase 2 message waves) per decision.",
            buckets=COUNT_BUCKETS,
            registry=r,
        )
        self.register_sets = Histogram(
            "graven_decision_register_sets",
            "Register sets tried per decision.",
            buckets=COUNT_BUCKETS,
            registry=r,
        )
        self.conflicts = Counter(
            "graven_proposal_conflicts",
            "Attempts abandoned because another value took the register set.",
            registry=r,
        )
        self.forwards = Counter(
            "graven_proposal_forwards",
            "Client proposals this node handed to the key's home member, by outcome (failed: "
            "proposed here instead: the home did not answer in time, or too many forwards).",
            ["outcome"],
            registry=r,
        )
        self.forwarded = {o: self.forwards.labels(o) for o in ("ok", "failed")}
        self.retries = Counter(
            "graven_proposal_retries",
            "Attempts beyond the first (after a conflict, fence or timeout).",
            registry=r,
        )
        self.rpc_duration = Histogram(
            "graven_acceptor_rpc_duration_seconds",
            "Duration of one (batched) request to an acceptor.",
            ["member"],
            buckets=RPC_BUCKETS,
            registry=r,
        )
        self.rpcs = Counter(
            "graven_acceptor_rpcs",
            "Requests (each a batch of items) sent to acceptors, by kind.",
            ["member", "kind"],
            registry=r,
        )
        self.rpc_failures = Counter(
            "graven_acceptor_rpc_failures",
            "Requests to acceptors that got no usable reply (refused, timed out, 5xx).",
            ["member"],
            registry=r,
        )
        self.rpc_items = Histogram(
            "graven_acceptor_rpc_batch_size",
            "Items per request to an acceptor.",
            buckets=BATCH_BUCKETS,
            registry=r,
        )
        self.in_flight = Gauge(
            "graven_proposals_in_flight", "Proposals this node is running.", registry=r
        )
        self._up = Gauge(
            "graven_member_up",
            "1 while this node reaches the member, 0 after a failed request until a probe works.",
            ["member"],
            registry=r,
        )
        self._margin = Gauge(
            "graven_quorum_margin",
            "More member failures this node's view survives while still deciding (-1: lost).",
            registry=r,
        )
        self.member_rpc_duration: dict[str, Histogram] = {}
        self.member_rpc_failures: dict[str, Counter] = {}
        self.member_rpcs: dict[tuple[str, str], Counter] = {}
        self._members: list[str] = []
        self.rebind(members, member_up, quorum_margin)

    def rebind(
        self,
        members: list[str],
        member_up: Callable[[int], bool],
        quorum_margin: Callable[[], int],
    ) -> None:
        """The members of the view served now (a configuration installed live): their series
        read the new gateway's reachability; a member that left the view loses its up series
        (its RPC counters stay: they are history)."""
        for name in self._members:
            if name not in members:
                self._up.remove(name)
        for i, name in enumerate(members):
            self.member_rpc_duration[name] = self.rpc_duration.labels(name)
            self.member_rpc_failures[name] = self.rpc_failures.labels(name)
            for kind in ("read", "write"):
                self.member_rpcs[name, kind] = self.rpcs.labels(name, kind)
            self._up.labels(name).set_function(lambda i=i: float(member_up(i)))
        self._members = list(members)
        self._margin.set_function(lambda: float(quorum_margin()))
