"""Shared test harness: paths, the kubeconfig template, and the operator runner thread."""

from __future__ import annotations

import copy
import threading
from dataclasses import dataclass
from pathlib import Path

import yaml

from graven.operator.metrics import ClusterMetrics, MetricsServer
from tests.operator.apiclient import Api
from tests.operator.emulator import Running

ROOT = Path(__file__).resolve().parents[2]
CRD_PATH = ROOT / "crds" / "consensusclusters.graven.dev.yaml"
EXAMPLES = ROOT / "examples"
NAMESPACE = "default"


def load_crd() -> dict:
    return yaml.safe_load(CRD_PATH.read_text())


def crd_schema() -> dict:
    return load_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]


@dataclass
class Cluster:
    server: Running
    api: Api
    kubeconfig: Path


KUBECONFIG = """\
apiVersion: v1
kind: Config
clusters:
- name: test
  cluster: {{server: "{url}"}}
users:
- name: test
  user: {{token: test-token}}
contexts:
- name: test
  context: {{cluster: test, user: test, namespace: {namespace}}}
current-context: test
"""


def loopback_members(ports: list[int], scheme: str = "http") -> dict[str, object]:
    """Operator options that reach member N of any cluster at 127.0.0.1:ports[N] (its probes
    and its reconfiguration calls): for members run as local processes."""
    return {
        "probe_members": True,
        "probe_url": lambda name, ns, m: f"{scheme}://127.0.0.1:{ports[m.index]}/readyz",
        "member_address": lambda name, ns, member: (
            f"{scheme}://127.0.0.1:{ports[int(member.rsplit('-', 1)[1])]}"
        ),
    }


class OperatorRunner:
    """The real operator (kopf.run) in its own thread and event loop."""

    def __init__(
        self, peering: str | None = None, serve_metrics: bool = False, **options: object
    ) -> None:
        from graven.operator.reconcile import Options

        defaults: dict[str, object] = {
            "health_interval": 0.5,
            "drift_interval": 1.5,
            "capabilities_ttl": 0.0,
        }
        self.options = Options(**{**defaults, **options})  # type: ignore[arg-type]
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._thread: threading.Thread | None = None
        self.error: BaseException | None = None
        self.reconciles = 0  # finished reconciles (handlers and drift timer), for tests to await
        self.peering = peering
        self.metrics = ClusterMetrics()
        self.serve_metrics = serve_metrics
        self.metrics_url = ""  # http://127.0.0.1:PORT/metrics once started with serve_metrics
        self._metrics_server: MetricsServer | None = None

    def _run(self) -> None:
        import kopf

        from graven.operator.handlers import register
        from graven.operator.reconcile import Operator

        runner = self

        class CountingOperator(Operator):
            async def reconcile(self, body):  # type: ignore[no-untyped-def]
                try:
                    return await super().reconcile(body)
                finally:
                    runner.reconciles += 1

        registry = kopf.OperatorRegistry()
        register(registry, CountingOperator(self.options, metrics=self.metrics))
        try:
            kopf.run(
                registry=registry,
                standalone=self.peering is None,
                peering_name=self.peering,
                clusterwide=True,
                stop_flag=self._stop,
                ready_flag=self._ready,
            )
        except BaseException as exc:
            self.error = exc
            self._ready.set()

    def start(self) -> OperatorRunner:
        if self.serve_metrics:  # the server `graven operator --metrics-port` runs
            self._metrics_server = MetricsServer(self.metrics, "127.0.0.1", 0)
            self.metrics_url = f"http://127.0.0.1:{self._metrics_server.port}/metrics"
        self._thread = threading.Thread(target=self._run, name="operator", daemon=True)
        self._thread.start()
        try:
            assert self._ready.wait(20), "the operator did not start"
            assert self.error is None, f"the operator failed: {self.error!r}"
        except AssertionError:
            self.stop()  # the fixture only stops what started: free the thread and the port
            raise
        return self

    def wait_reconciles(self, count: int = 2, timeout: float = 20) -> None:
        """Wait for ``count`` more reconciles: e.g. drift timer passes after a change."""
        from tests.operator.apiclient import wait_for

        target = self.reconciles + count
        wait_for(lambda: self.reconciles >= target, timeout=timeout, what=f"{count} reconciles")

    def stop(self) -> None:
        self._stop.set()
        if self._metrics_server is not None:
            self._metrics_server.close()
            self._metrics_server = None
        if self._thread is not None:
            self._thread.join(20)
            assert not self._thread.is_alive(), "the operator did not stop"


def demo(namespace: str = NAMESPACE, **spec: object) -> dict:
    """examples/cluster.yaml in ``namespace`` with these spec fields replaced."""
    doc = yaml.safe_load((EXAMPLES / "cluster.yaml").read_text())
    doc["metadata"]["namespace"] = namespace
    doc["spec"].update(copy.deepcopy(spec))
    return doc


def open_crd(group: str, kind: str, plural: str) -> dict:
    """A served CRD that takes any fields: for another project's kinds, as far as the emulator
    needs them (tests/kube installs the real ones, whose schemas the real apiserver checks)."""
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural}.{group}"},
        "spec": {
            "group": group,
            "scope": "Namespaced",
            "names": {"kind": kind, "plural": plural, "singular": kind.lower()},
            "versions": [
                {
                    "name": "v1",
                    "served": True,
                    "storage": True,
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "x-kubernetes-preserve-unknown-fields": True,
                        }
                    },
                }
            ],
        },
    }


def monitoring_crd(kind: str, plural: str) -> dict:
    return open_crd("monitoring.coreos.com", kind, plural)
