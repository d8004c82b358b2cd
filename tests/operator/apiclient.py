"""A blocking JSON client for tests: what a user (or kubelet) would see through the API."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

T = TypeVar("T")

GROUP_PATHS = {
    "ConfigMap": "/api/v1",
    "Service": "/api/v1",
    "Pod": "/api/v1",
    "PersistentVolumeClaim": "/api/v1",
    "Event": "/api/v1",
    "Secret": "/api/v1",
    "NetworkPolicy": "/apis/networking.k8s.io/v1",
    "StatefulSet": "/apis/apps/v1",
    "PodDisruptionBudget": "/apis/policy/v1",
    "ServiceMonitor": "/apis/monitoring.coreos.com/v1",
    "PrometheusRule": "/apis/monitoring.coreos.com/v1",
    "ConsensusCluster": "/apis/graven.dev/v1alpha1",
    "CustomResourceDefinition": "/apis/apiextensions.k8s.io/v1",
    "Certificate": "/apis/cert-manager.io/v1",
}
PLURALS = {
    "ConfigMap": "configmaps",
    "Service": "services",
    "Pod": "pods",
    "PersistentVolumeClaim": "persistentvolumeclaims",
    "Event": "events",
    "Secret": "secrets",
    "NetworkPolicy": "networkpolicies",
    "StatefulSet": "statefulsets",
    "PodDisruptionBudget": "poddisruptionbudgets",
    "ServiceMonitor": "servicemonitors",
    "PrometheusRule": "prometheusrules",
    "ConsensusCluster": "consensusclusters",
    "CustomResourceDefinition": "customresourcedefinitions",
    "Certificate": "certificates",
}


class ApiError(Exception):
    def __init__(self, status: int, body: Any) -> None:
        super().__init__(f"{status}: {body}")
        self.status = status
        self.body = body


def url_of(kind: str, namespace: str | None = None, name: str | None = None) -> str:
    parts = [GROUP_PATHS[kind]]
    if namespace:
        parts.append(f"namespaces/{namespace}")
    parts.append(PLURALS[kind])
    if name:
        parts.append(name)
    return "/".join(parts)


class Api:
    def __init__(self, base: str) -> None:
        self.base = base.rstrip("/")

    def request(self, method: str, path: str, body: Any = None, ctype: str = "") -> Any:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.base + path, data=data, method=method)
        req.add_header("Accept", "application/json")
        if data is not None:
            req.add_header("Content-Type", ctype or "application/json")
        try:
            with urllib.request.urlopen(req, timeout=10) as rsp:
                raw = rsp.read()
        except urllib.error.HTTPError as exc:
            raw = exc.read()
            try:
                detail = json.loads(raw)
            except ValueError:
                detail = raw.decode(errors="replace")
            raise ApiError(exc.code, detail) from None
        return json.loads(raw) if raw else None

    def get(self, kind: str, namespace: str | None, name: str) -> dict | None:
        try:
            return self.request("GET", url_of(kind, namespace, name))
        except ApiError as exc:
            if exc.status == 404:
                return None
            raise

    def list(self, kind: str, namespace: str | None = None, labels: str = "") -> list[dict]:
        query = "?" + urllib.parse.urlencode({"labelSelector": labels}) if labels else ""
        return self.request("GET", url_of(kind, namespace) + query)["items"]

    def create(self, obj: Mapping[str, Any]) -> dict:
        namespace = obj.get("metadata", {}).get("namespace")
        return self.request("POST", url_of(obj["kind"], namespace), dict(obj))

    def patch(
        self, kind: str, namespace: str | None, name: str, patch: Any, status: bool = False
    ) -> dict:
        path = url_of(kind, namespace, name) + ("/status" if status else "")
        return self.request("PATCH", path, patch, "application/merge-patch+json")

    def delete(self, kind: str, namespace: str | None, name: str) -> None:
        self.request("DELETE", url_of(kind, namespace, name))

    def events(self, namespace: str, involved: str) -> list[dict]:
        items = self.list("Event", namespace)
        return [e for e in items if (e.get("involvedObject") or {}).get("name") == involved]


def wait_for(
    probe: Callable[[], T], timeout: float = 15.0, interval: float = 0.1, what: str = ""
) -> T:
    """Poll ``probe`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = probe()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what or probe}: last={last!r}")


def condition(obj: Mapping[str, Any] | None, kind: str) -> dict:
    for cond in ((obj or {}).get("status") or {}).get("conditions") or []:
        if cond.get("type") == kind:
            return cond
    return {}
