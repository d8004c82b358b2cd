"""A small asyncio client for the Kubernetes REST API that speaks plain JSON dicts.

Why not the `kubernetes` package's typed API: its models rename fields (snake_case) and drop
what they do not know, while the drift check must compare the exact JSON the apiserver
returns; and its calls block, while kopf handlers run on an event loop. Credentials come from
kopf's login handler (one source of truth for kopf's own watches and for this client).
"""

from __future__ import annotations

import asyncio
import json
import ssl
from collections.abc import Mapping
from typing import Any

import aiohttp

from . import names

# kind -> (plural, namespaced); apiVersion comes with the object.
PLURALS: dict[str, str] = {
    "ConfigMap": "configmaps",
    "Service": "services",
    "StatefulSet": "statefulsets",
    "PodDisruptionBudget": "poddisruptionbudgets",
    "ServiceMonitor": "servicemonitors",
    "PrometheusRule": "prometheusrules",
    "Pod": "pods",
    "PersistentVolumeClaim": "persistentvolumeclaims",
    "Secret": "secrets",
    "NetworkPolicy": "networkpolicies",
    "Event": "events",
    "Certificate": "certificates",  # cert-manager.io/v1
    names.KIND: names.PLURAL,
}
API_VERSIONS: dict[str, str] = {
    "ConfigMap": "v1",
    "Service": "v1",
    "Pod": "v1",
    "PersistentVolumeClaim": "v1",
    "StatefulSet": "apps/v1",
    "PodDisruptionBudget": "policy/v1",
    "ServiceMonitor": "monitoring.coreos.com/v1",
    "PrometheusRule": "monitoring.coreos.com/v1",
    "Secret": "v1",
    "NetworkPolicy": "networking.k8s.io/v1",
    "Event": "v1",
    "Certificate": "cert-manager.io/v1",
    names.KIND: names.API_VERSION,
}
MERGE_PATCH = "application/merge-patch+json"
# Transient apiserver answers worth a retry (conflict, throttling, server side trouble).
RETRYABLE = {409, 429, 500, 502, 503, 504}


class ApiError(Exception):
    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(f"{status} {reason}: {message}")
        self.status = status
        self.reason = reason
        self.message = message

    @property
    def retryable(self) -> bool:
        return self.status in RETRYABLE


def path(
    kind: str,
    namespace: str | None,
    name: str | None = None,
    subresource: str | None = None,
    api_version: str | None = None,
) -> str:
    api_version = api_version or API_VERSIONS[kind]
    root = f"/api/{api_version}" if "/" not in api_version else f"/apis/{api_version}"
    parts = [root]
    if namespace:
        parts.append(f"namespaces/{namespace}")
    parts.append(PLURALS[kind])
    if name:
        parts.append(name)
    if subresource:
        parts.append(subresource)
    return "/".join(parts)


def object_path(obj: Mapping[str, Any]) -> str:
    meta = obj["metadata"]
    return path(obj["kind"], meta.get("namespace"), meta["name"], api_version=obj["apiVersion"])


def label_selector(labels: Mapping[str, str]) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(labels.items()))


class Kube:
    """One apiserver connection; ``use()`` swaps credentials (kopf re-logins on expiry)."""

    def __init__(self, timeout: float = 30.0) -> None:
        self._creds: Any = None
        self._session: aiohttp.ClientSession | None = None
        self._timeout = aiohttp.ClientTimeout(total=timeout)

    def use(self, creds: Any) -> None:
        """Take a kopf ``ConnectionInfo``; the next request opens a fresh session with it."""
        self._creds = creds
        old, self._session = self._session, None
        if old is not None and not old.closed:
            asyncio.get_running_loop().create_task(old.close())

    @property
    def ready(self) -> bool:
        return self._creds is not None

    def _ssl(self) -> ssl.SSLContext | bool:
        creds = self._creds
        if creds.insecure:
            return False
        ctx = ssl.create_default_context(
            cafile=creds.ca_path,
            cadata=creds.ca_data.decode() if isinstance(creds.ca_data, bytes) else creds.ca_data,
        )
        if creds.certificate_path or creds.certificate_data:
            if creds.certificate_data or creds.private_key_data:
                raise ApiError(0, "Unsupported", "inline client certificates need file paths")
            ctx.load_cert_chain(creds.certificate_path, creds.private_key_path)
        return ctx

    async def _get_session(self) -> aiohttp.ClientSession:
        if self._creds is None:
            raise ApiError(0, "NotLoggedIn", "no credentials yet (kopf login has not run)")
        if self._session is None or self._session.closed:
            connector = None
            if self._creds.server.startswith("https"):
                connector = aiohttp.TCPConnector(ssl=self._ssl())
            self._session = aiohttp.ClientSession(
                base_url=self._creds.server.rstrip("/") + "/",
                connector=connector,
                timeout=self._timeout,
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None and not self._session.closed:
            await self._session.close()
        self._session = None

    async def request(
        self,
        method: str,
        url: str,
        *,
        params: Mapping[str, str] | None = None,
        body: Any = None,
        content_type: str = "application/json",
    ) -> Any:
        session = await self._get_session()
        headers = {"Accept": "application/json", **self._creds.as_http_headers()}
        if body is not None:
            headers["Content-Type"] = content_type
        try:
            async with session.request(
                method, url.lstrip("/"), params=params, json=body, headers=headers
            ) as rsp:
                raw = await rsp.read()
                try:
                    data = json.loads(raw) if raw else None
                except ValueError:  # a proxy's HTML error page, say
                    data = None
                if rsp.status >= 400:
                    data = data if isinstance(data, Mapping) else {}
                    raise ApiError(
                        rsp.status,
                        str(data.get("reason") or rsp.reason),
                        str(data.get("message") or ""),
                    )
                return data
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise ApiError(503, "Unreachable", f"{method} {url}: {exc!r}") from exc

    async def get(self, url: str) -> dict | None:
        try:
            return await self.request("GET", url)
        except ApiError as exc:
            if exc.status == 404:
                return None
            raise

    async def list(self, url: str, labels: Mapping[str, str] | None = None) -> list[dict]:
        params = {"labelSelector": label_selector(labels)} if labels else None
        data = await self.request("GET", url, params=params)
        return list((data or {}).get("items") or [])

    async def create(self, url: str, body: Mapping[str, Any]) -> dict:
        return await self.request("POST", url, body=dict(body))

    async def patch(self, url: str, patch: Mapping[str, Any]) -> dict:
        return await self.request("PATCH", url, body=dict(patch), content_type=MERGE_PATCH)

    async def delete(self, url: str) -> bool:
        """Delete with background propagation; False if it was already gone."""
        body = {"kind": "DeleteOptions", "apiVersion": "v1", "propagationPolicy": "Background"}
        try:
            await self.request("DELETE", url, body=body)
        except ApiError as exc:
            if exc.status == 404:
                return False
            raise
        return True

    async def resources(self, group_version: str) -> set[str] | None:
        """Plural names served by an API group version; None if it is not served at all."""
        data = await self.get(f"/apis/{group_version}")
        if data is None:
            return None
        return {r.get("name", "") for r in data.get("resources") or []}
