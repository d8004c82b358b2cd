"""The test plays the StatefulSet controller and the kubelet (nothing else would run pods).

From the live StatefulSet it makes what a cluster would: one Pod per ordinal carrying the
template's labels, one PVC per member from the claim template, and the StatefulSet's status.
Readiness is whatever the test says (or, end to end, what a real `graven node` answers).
"""

from __future__ import annotations

import base64
import copy
import datetime
import re
import signal
import ssl
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml

from tests.operator.apiclient import Api


class FakeKubelet:
    def __init__(self, api: Api, namespace: str, name: str) -> None:
        self.api = api
        self.namespace = namespace
        self.name = name

    def statefulset(self) -> dict:
        sts = self.api.get("StatefulSet", self.namespace, self.name)
        assert sts is not None, "no StatefulSet to run"
        return sts

    def pod_name(self, index: int) -> str:
        return f"{self.name}-{index}"

    def run(self, ready: Iterable[int] | None = None, ip: str = "127.0.0.1") -> None:
        """Create the pods and claims; mark ``ready`` ordinals Ready (default: all)."""
        sts = self.statefulset()
        replicas = sts["spec"]["replicas"]
        template = sts["spec"]["template"]
        ready_set = set(range(replicas) if ready is None else ready)
        for i in range(replicas):
            self._ensure_claims(sts, i)
            if self.api.get("Pod", self.namespace, self.pod_name(i)) is None:
                self.api.create(self._pod(sts, template, i))
            self.set_ready(i, i in ready_set, ip)
        revision = f"{self.name}-{sts['metadata']['resourceVersion']}"
        self.api.patch(
            "StatefulSet",
            self.namespace,
            self.name,
            {
                "status": {
                    "observedGeneration": sts["metadata"]["generation"],
                    "replicas": replicas,
                    "readyReplicas": len(ready_set),
                    "updatedReplicas": replicas,
                    "currentRevision": revision,
                    "updateRevision": revision,
                }
            },
            status=True,
        )

    def _pod(self, sts: dict, template: dict, index: int) -> dict:
        meta = copy.deepcopy(template.get("metadata") or {})
        meta.update(
            name=self.pod_name(index),
            namespace=self.namespace,
            ownerReferences=[
                {
                    "apiVersion": "apps/v1",
                    "kind": "StatefulSet",
                    "name": self.name,
                    "uid": sts["metadata"]["uid"],
                    "controller": True,
                    "blockOwnerDeletion": True,
                }
            ],
        )
        spec = copy.deepcopy(template["spec"])
        spec["hostname"] = self.pod_name(index)
        spec["subdomain"] = sts["spec"]["serviceName"]
        spec["volumes"] = [
            *spec.get("volumes", []),
            {
                "name": "data",
                "persistentVolumeClaim": {"claimName": f"data-{self.pod_name(index)}"},
            },
        ]
        return {"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": spec}

    def _ensure_claims(self, sts: dict, index: int) -> None:
        for claim in sts["spec"].get("volumeClaimTemplates") or []:
            name = f"{claim['metadata']['name']}-{self.pod_name(index)}"
            if self.api.get("PersistentVolumeClaim", self.namespace, name) is None:
                meta = {**copy.deepcopy(claim["metadata"]), "name": name}
                meta["namespace"] = self.namespace
                self.api.create(
                    {
                        "apiVersion": "v1",
                        "kind": "PersistentVolumeClaim",
                        "metadata": meta,
                        "spec": copy.deepcopy(claim["spec"]),
                    }
                )

    def set_ready(self, index: int, ready: bool, ip: str = "127.0.0.1") -> None:
        state = "True" if ready else "False"
        status: dict[str, Any] = {
            "phase": "Running",
            "podIP": ip,
            "conditions": [
                {"type": "PodScheduled", "status": "True"},
                {"type": "ContainersReady", "status": state},
                {"type": "Ready", "status": state},
            ],
        }
        self.api.patch("Pod", self.namespace, self.pod_name(index), {"status": status}, True)


class ProcessKubelet(FakeKubelet):
    """Runs each member as a real `graven node` process from the rendered pod template.

    Command, args and env come from the StatefulSet's template ($(VAR) expanded as the kubelet
    does); each volume mount becomes a directory under ``root``; the ConfigMap's cluster.yaml
    is written into the config mount with member URLs rewritten to 127.0.0.1 ports, and the
    listen address moves to the member's port. Readiness is the template's readiness probe,
    asked of the real process; ``sync()`` publishes it as the pod's Ready condition.
    """

    def __init__(self, api: Api, namespace: str, name: str, root: Path, ports: list[int]) -> None:
        super().__init__(api, namespace, name)
        self.root = root
        self.ports = ports
        self.procs: dict[int, subprocess.Popen] = {}
        self.ready: dict[int, bool] = {}
        self.exits: dict[int, int] = {}  # exit statuses already published
        self.unschedulable: set[int] = set()  # ordinals whose pods stay Pending

    def _config(self, sts: dict) -> str:
        volumes = {v["name"]: v for v in sts["spec"]["template"]["spec"]["volumes"]}
        cm_name = volumes["config"]["configMap"]["name"]
        cm = self.api.get("ConfigMap", self.namespace, cm_name)
        assert cm is not None, "the pods' ConfigMap does not exist"
        doc = yaml.safe_load(cm["data"]["cluster.yaml"])
        # member NAME-i is pod ordinal i, in every live epoch (older ones under `previous`)
        for members in [doc["members"], *(p["members"] for p in doc.get("previous", []))]:
            for member in members:
                scheme = member["url"].split("://", 1)[0]  # https when the cluster runs TLS
                ordinal = int(member["name"].rsplit("-", 1)[1])
                member["url"] = f"{scheme}://127.0.0.1:{self.ports[ordinal]}"
        return yaml.safe_dump(doc)

    def start(self, index: int) -> None:
        sts = self.statefulset()
        (container,) = sts["spec"]["template"]["spec"]["containers"]
        env = {
            e["name"]: self.pod_name(index)
            if e["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
            else self.namespace
            for e in container["env"]
        }
        mounts = {}
        for mount in container["volumeMounts"]:
            host = self.root / f"{self.pod_name(index)}-{mount['name']}"
            host.mkdir(parents=True, exist_ok=True)
            mounts[mount["mountPath"]] = host
            if mount["name"] == "config":
                (host / "cluster.yaml").write_text(self._config(sts))
            else:
                self._secret_volume(sts, mount["name"], host)
        port = container["ports"][0]["containerPort"]
        argv = []
        for arg in [*container["command"], *container.get("args", [])]:
            arg = re.sub(r"\$\((\w+)\)", lambda m: env.get(m.group(1), m.group(0)), arg)
            arg = arg.replace(f"0.0.0.0:{port}", f"127.0.0.1:{self.ports[index]}")
            for path in sorted(mounts, key=len, reverse=True):  # the deepest mount wins
                if arg == path or arg.startswith(path + "/"):
                    arg = str(mounts[path]) + arg[len(path) :]
                    break
            argv.append(arg)
        argv[0] = str(Path(sys.executable).with_name(argv[0]))  # the venv's `graven`
        log = open(self.root / f"{self.pod_name(index)}.log", "ab")  # noqa: SIM115
        self.procs[index] = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
        self.exits.pop(index, None)

    def _secret_volume(self, sts: dict, volume_name: str, host: Path) -> None:
        """A Secret volume's files, as the kubelet projects them (``items`` or every key)."""
        volumes = {v["name"]: v for v in sts["spec"]["template"]["spec"]["volumes"]}
        source = volumes.get(volume_name, {}).get("secret")  # PVCs are not in volumes
        if source is None:
            return
        secret = self.api.get("Secret", self.namespace, source["secretName"])
        assert secret is not None, f"Secret {source['secretName']} does not exist"
        data = secret.get("data") or {}
        items = source.get("items") or [{"key": k, "path": k} for k in data]
        for item in items:
            (host / item["path"]).write_bytes(base64.b64decode(data[item["key"]]))

    def kill(self, index: int) -> None:
        proc = self.procs.pop(index)
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
        proc.wait(10)

    def stop_all(self) -> None:
        for index in list(self.procs):
            self.kill(index)

    def probe(self, index: int) -> bool:
        sts = self.statefulset()
        get = sts["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["httpGet"]
        if index not in self.procs:
            return False
        try:
            url = f"{get['scheme'].lower()}://127.0.0.1:{self.ports[index]}{get['path']}"
            # like the kubelet: an HTTPS probe does not verify the certificate
            ctx = ssl._create_unverified_context()
            with urllib.request.urlopen(url, timeout=1, context=ctx) as rsp:
                return rsp.status == 200
        except (OSError, urllib.error.URLError):
            return False

    def sync(self) -> dict[int, bool]:
        """Probe every member and publish changed readiness; returns the readiness map.

        A member process that exited is published as a kubelet does for a container in
        restart back-off: ``lastState.terminated`` with its exit code and, under
        ``terminationMessagePolicy: FallbackToLogsOnError``, the tail of its log as message.
        """
        replicas = self.statefulset()["spec"]["replicas"]
        for i in range(replicas):
            if i in self.unschedulable:  # Pending: no container, no readiness to publish
                continue
            ok = self.probe(i)
            if self.ready.get(i) != ok:
                self.set_ready(i, ok)
                self.ready[i] = ok
            proc = self.procs.get(i)
            if proc is not None and proc.poll() is not None and i not in self.exits:
                self.exits[i] = proc.returncode
                self._publish_exit(i, proc.returncode)
        return dict(self.ready)

    def _publish_exit(self, index: int, code: int) -> None:
        (container,) = self.statefulset()["spec"]["template"]["spec"]["containers"]
        terminated: dict[str, Any] = {"exitCode": code, "reason": "Error"}
        if container.get("terminationMessagePolicy") == "FallbackToLogsOnError":
            # what the kubelet takes: at most the last 80 lines and 2048 bytes of the log
            log = (self.root / f"{self.pod_name(index)}.log").read_bytes()[-2048:]
            terminated["message"] = "\n".join(log.decode(errors="replace").splitlines()[-80:])
        status = {
            "containerStatuses": [
                {
                    "name": container["name"],
                    "image": container["image"],
                    "imageID": "",
                    "ready": False,
                    "restartCount": 1,
                    "state": {"waiting": {"reason": "CrashLoopBackOff"}},
                    "lastState": {"terminated": terminated},
                }
            ]
        }
        self.api.patch("Pod", self.namespace, self.pod_name(index), {"status": status}, True)


class ProcessStatefulSet(ProcessKubelet):
    """ProcessKubelet plus the StatefulSet controller's part, one ``step()`` at a time: pods
    for new ordinals (started at once, as podManagementPolicy Parallel does), removal of the
    highest ordinals on scale-down, and a rolling update when the pod template changes (the
    highest outdated ordinal first, one at a time, only while every member is ready).
    Pods of ordinals in ``unschedulable`` stay Pending (the scheduler finds no node), and each
    started member's container status says when it started, as the kubelet's does."""

    HASH = "graven.dev/config-hash"

    def __init__(self, api: Api, namespace: str, name: str, root: Path, ports: list[int]) -> None:
        super().__init__(api, namespace, name, root, ports)
        self.revision: dict[int, str] = {}  # ordinal -> the template hash it was started with
        self.restarts = 0
        self.starts: dict[int, int] = {}  # ordinal -> container starts
        self._sts: dict | None = None

    def statefulset(self) -> dict:
        # one read per step: the emulator records every request, and scans them on each one
        if self._sts is None:
            self._sts = super().statefulset()
        return self._sts

    def _template_hash(self, sts: dict) -> str:
        return sts["spec"]["template"]["metadata"]["annotations"][self.HASH]

    def start(self, index: int) -> None:
        sts = self.statefulset()
        self.revision[index] = self._template_hash(sts)
        super().start(index)
        self.starts[index] = self.starts.get(index, 0) + 1
        (container,) = sts["spec"]["template"]["spec"]["containers"]
        now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        running = {
            "name": container["name"],
            "image": container["image"],
            "imageID": "",
            "ready": False,
            "started": True,
            "restartCount": self.starts[index] - 1,
            "state": {"running": {"startedAt": now}},
        }
        self.api.patch(
            "Pod",
            self.namespace,
            self.pod_name(index),
            {"status": {"containerStatuses": [running]}},
            True,
        )

    def _pending(self, sts: dict, index: int) -> None:
        """A pod the scheduler cannot place: created, Pending, never started."""
        self._ensure_claims(sts, index)
        if self.api.get("Pod", self.namespace, self.pod_name(index)) is None:
            self.api.create(self._pod(sts, sts["spec"]["template"], index))
            unschedulable = {
                "type": "PodScheduled",
                "status": "False",
                "reason": "Unschedulable",
                "message": "0/1 nodes are available: 1 Insufficient memory.",
            }
            status = {"phase": "Pending", "conditions": [unschedulable]}
            self.api.patch("Pod", self.namespace, self.pod_name(index), {"status": status}, True)

    def step(self) -> None:
        self._sts = None
        sts = self.statefulset()
        replicas = sts["spec"]["replicas"]
        want = self._template_hash(sts)
        for i in sorted(set(self.procs) | set(self.revision) | self.unschedulable, reverse=True):
            if i >= replicas:  # scaled down: the pod goes, its claim stays (Retain)
                if i in self.procs:
                    self.kill(i)
                self.revision.pop(i, None)
                self.ready.pop(i, None)
                if self.api.get("Pod", self.namespace, self.pod_name(i)) is not None:
                    self.api.delete("Pod", self.namespace, self.pod_name(i))
        template = sts["spec"]["template"]
        for i in range(replicas):
            proc = self.procs.get(i)
            if proc is not None and proc.poll() is not None:  # the kubelet restarts it
                self.procs.pop(i)
            if i in self.unschedulable and i not in self.procs:
                self._pending(sts, i)
                continue
            if i not in self.procs:
                self._ensure_claims(sts, i)
                if self.api.get("Pod", self.namespace, self.pod_name(i)) is None:
                    self.api.create(self._pod(sts, template, i))
                    self.set_ready(i, False)
                self.start(i)
        ready = self.sync()
        outdated = [i for i in range(replicas) if self.revision.get(i) != want]
        if outdated and all(ready.get(i) for i in range(replicas)):
            i = max(outdated)
            self.kill(i)
            self.set_ready(i, False)
            self.ready[i] = False
            self.start(i)
            self.restarts += 1
            outdated.remove(i)
        updated = replicas - len(outdated)
        revision = f"{self.name}-{want}"
        status = {
            "observedGeneration": sts["metadata"]["generation"],
            "replicas": replicas,
            "readyReplicas": sum(1 for i in range(replicas) if self.ready.get(i)),
            "updatedReplicas": updated,
            "currentRevision": revision if not outdated else f"{self.name}-old",
            "updateRevision": revision,
        }
        if sts.get("status") != {**(sts.get("status") or {}), **status}:
            self.api.patch("StatefulSet", self.namespace, self.name, {"status": status}, True)


class Controller:
    """Runs ``ProcessStatefulSet.step`` in a thread until stopped (bounded in steps)."""

    def __init__(self, kubelet: ProcessStatefulSet, interval: float = 0.25) -> None:
        import threading

        self.kubelet = kubelet
        self.interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="statefulset", daemon=True)
        self.error: BaseException | None = None

    def _run(self) -> None:
        for _ in range(100_000):
            if self._stop.wait(self.interval):
                return
            try:
                self.kubelet.step()
            except Exception as exc:  # the apiserver may be slow; a later step retries
                self.error = exc

    def __enter__(self) -> Controller:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(30)
        self.kubelet.stop_all()
