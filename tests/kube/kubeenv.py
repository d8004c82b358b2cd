"""Helpers for the end-to-end tests on the real Kubernetes that `make kube` starts.

`make test-kube` runs pytest inside the cluster's network namespace (the node's view: the
apiserver on 127.0.0.1:6443, Service and pod IPs routed), with the pinned kubectl that
`make kube` built and the pinned helm of tools/fetch-helm.sh. Outside `make test-kube`
(GRAVEN_KUBE unset) every test here is skipped: `make test` must not need a cluster.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

REPO = Path(__file__).resolve().parents[2]
OPERATOR_NS = "graven-system"
NS = "graven-e2e"  # where the tests' ConsensusClusters live
RELEASE = "graven"
T = TypeVar("T")


def _kube_env() -> dict[str, str]:
    """The settings of tools/kube/env.sh (one source of truth for paths and versions)."""
    names = ("KUBE_BIN", "KUBECONFIG_ADMIN", "KUBE_STATE", "KUBE_VERSION", "KUBE_NETNS", "NODE_IP")
    script = ". tools/kube/env.sh; " + "; ".join(f'echo "{n}=${n}"' for n in names)
    out = subprocess.run(
        ["bash", "-c", script], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout
    return dict(line.split("=", 1) for line in out.splitlines())


ENV = _kube_env()


def wait_for(probe: Callable[[], T], timeout: float, what: str, interval: float = 1.0) -> T:
    """Poll ``probe`` until it returns something truthy; bounded in time."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        last = probe()
        if last:
            return last
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}: last={last!r}")
        time.sleep(interval)


@dataclass
class Kubectl:
    binary: str
    kubeconfig: str

    def __call__(
        self, *args: str, input: str | None = None, check: bool = True, timeout: float = 120
    ) -> subprocess.CompletedProcess:
        done = subprocess.run(
            [self.binary, "--kubeconfig", self.kubeconfig, *args],
            input=input,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if check and done.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} failed:\n{done.stdout}{done.stderr}")
        return done

    def json(self, *args: str) -> Any:
        return json.loads(self(*args, "-o", "json").stdout)

    def get(self, *args: str) -> Any | None:
        """An object as JSON, or None if it does not exist."""
        done = self("get", *args, "-o", "json", check=False)
        if done.returncode != 0:
            if "NotFound" in done.stderr or "not found" in done.stderr:
                return None
            raise AssertionError(f"kubectl get {' '.join(args)}: {done.stderr}")
        return json.loads(done.stdout)

    def apply(self, doc: dict, namespace: str = NS) -> None:
        self("apply", "-n", namespace, "-f", "-", input=json.dumps(doc))
