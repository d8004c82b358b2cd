"""A Kubernetes apiserver stand-in for operator tests: kmock's emulator + apiserver behaviour.

kmock 0.8's ``KubernetesEmulator`` stores objects and serves list/watch/patch/finalizers. This
subclass adds what kopf, the operator and kubectl rely on (see design/testing-here.md):

- server-set metadata: uid, resourceVersion, generation (bumped only when more than metadata
  or status changes), creationTimestamp, namespace;
- the status subresource (status ignored on the main endpoint, only status via ``/status``);
- list kind/apiVersion/resourceVersion, label and field selectors on list and watch, JSON
  watch streams, core discovery as ``v1``, server-side Table output for ``kubectl get``
  (CRD printer columns included);
- PUT as a full replacement, server-side apply of a missing object as a create;
- CRD registration on create; custom objects defaulted and validated against the CRD's
  openAPIV3Schema (422 Invalid). Unknown fields are rejected, which is stricter than the
  apiserver (it prunes them silently): a test should fail if the operator writes a status field
  the CRD does not declare;
- builtin objects (ConfigMap, Service, StatefulSet, ...) validated with kubernetes-validate;
- an OpenAPI stub so kubectl chooses server-side field validation.

Not emulated: CEL rules (x-kubernetes-validations), garbage collection via ownerReferences,
resourceVersion conflicts, RBAC, admission webhooks, and every controller (no pods appear for a
StatefulSet: tests play the kubelet).
"""

from __future__ import annotations

import asyncio
import copy
import datetime
import itertools
import threading
import uuid
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp.web
import attrs
import jsonschema
import kmock
import kubernetes_validate
from kmock._internal import dicts, enums

K8S_VERSION = "1.33.0"
# Builtin kinds validated on write (events and the like are left alone).
VALIDATED_KINDS = {
    "ConfigMap",
    "Service",
    "StatefulSet",
    "PodDisruptionBudget",
    "Pod",
    "PersistentVolumeClaim",
    "CustomResourceDefinition",
    "Secret",
    "NetworkPolicy",
}
CRD_RESOURCE = kmock.resource("apiextensions.k8s.io", "v1", "customresourcedefinitions")


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _status(code: int, reason: str, message: str) -> aiohttp.web.Response:
    body = {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "code": code,
        "reason": reason,
        "message": message,
    }
    return aiohttp.web.json_response(body, status=code)


def merge_diff(old: Mapping[str, Any], new: Mapping[str, Any]) -> dict[str, Any]:
    """The JSON merge patch (RFC 7386) that turns ``old`` into ``new``."""
    out: dict[str, Any] = {k: None for k in old if k not in new}
    for k, v in new.items():
        if isinstance(v, Mapping) and isinstance(old.get(k), Mapping):
            sub = merge_diff(old[k], v)
            if sub:
                out[k] = sub
        elif k not in old or old[k] != v:
            out[k] = v
    return out


# ------------------------------------------------------------------------------- selectors


def _split_requirements(text: str) -> Iterator[str]:
    depth, start = 0, 0
    for i, ch in enumerate(text):
        depth += ch == "("
        depth -= ch == ")"
        if ch == "," and depth == 0:
            yield text[start:i].strip()
            start = i + 1
    yield text[start:].strip()


def labels_match(labels: Mapping[str, str], selector: str) -> bool:
    for req in filter(None, _split_requirements(selector)):
        for op in (" notin ", " in "):
            if op in req:
                key, values = req.split(op, 1)
                wanted = {v.strip() for v in values.strip().strip("()").split(",")}
                inside = key.strip() in labels and labels[key.strip()] in wanted
                if inside != (op == " in "):
                    return False
                break
        else:
            if "!=" in req:
                key, value = (s.strip() for s in req.split("!=", 1))
                if labels.get(key) == value:
                    return False
            elif "=" in req:
                key, value = (s.strip() for s in req.replace("==", "=").split("=", 1))
                if labels.get(key) != value:
                    return False
            elif req.startswith("!"):
                if req[1:].strip() in labels:
                    return False
            elif req not in labels:
                return False
    return True


def fields_match(obj: Mapping[str, Any], selector: str) -> bool:
    for req in filter(None, (r.strip() for r in selector.split(","))):
        negate = "!=" in req
        field_path, value = req.replace("==", "=").split("!=" if negate else "=", 1)
        current: Any = obj
        for part in field_path.strip().split("."):
            current = current.get(part) if isinstance(current, Mapping) else None
        if (str(current) == value.strip()) == negate:
            return False
    return True


def selected(obj: Mapping[str, Any], params: Mapping[str, str]) -> bool:
    labels = (obj.get("metadata") or {}).get("labels") or {}
    if params.get("labelSelector") and not labels_match(labels, params["labelSelector"]):
        return False
    return not (params.get("fieldSelector") and not fields_match(obj, params["fieldSelector"]))


# ------------------------------------------------------------------------------- CRD schemas


def strict_schema(schema: Any) -> Any:
    """jsonschema form of a structural schema: objects with declared properties are closed."""
    if isinstance(schema, list):
        return [strict_schema(s) for s in schema]
    if not isinstance(schema, Mapping):
        return schema
    out = {k: strict_schema(v) for k, v in schema.items()}
    if (
        "properties" in out
        and "additionalProperties" not in out
        and not out.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    return out


def apply_defaults(obj: Any, schema: Mapping[str, Any]) -> None:
    """Fill in ``default`` values top-down (a defaulted object gets its own defaults too)."""
    if isinstance(obj, dict):
        props = schema.get("properties") or {}
        for key, sub in props.items():
            if key not in obj and "default" in sub:
                obj[key] = copy.deepcopy(sub["default"])
            if key in obj:
                apply_defaults(obj[key], sub)
        extra = schema.get("additionalProperties")
        if isinstance(extra, Mapping):
            for key, value in obj.items():
                if key not in props:
                    apply_defaults(value, extra)
    elif isinstance(obj, list) and isinstance(schema.get("items"), Mapping):
        for item in obj:
            apply_defaults(item, schema["items"])


@dataclass
class CustomKind:
    kind: str
    schema: Mapping[str, Any] | None
    columns: list[Mapping[str, Any]]
    has_status: bool


# ------------------------------------------------------------------------------- tables


def _age(timestamp: str | None) -> str | None:
    if not timestamp:
        return None
    then = datetime.datetime.fromisoformat(timestamp.replace("Z", "+00:00"))
    seconds = max(0, int((_now() - then).total_seconds()))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= 2 * size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def _json_path(obj: Any, expr: str) -> Any:
    for part in expr.strip().lstrip(".").split("."):
        obj = obj.get(part) if isinstance(obj, Mapping) else None
    return obj


def table(objects: list[Mapping[str, Any]], columns: list[Mapping[str, Any]], rv: str) -> dict:
    """A meta.k8s.io/v1 Table, as the apiserver renders for `kubectl get`."""
    defs = [{"name": "Name", "type": "string", "format": "name", "description": "", "priority": 0}]
    defs += [
        {
            "name": c["name"],
            "type": "string" if c.get("type") == "date" else c.get("type", "string"),
            "format": c.get("format", ""),
            "description": c.get("description", ""),
            "priority": c.get("priority", 0),
        }
        for c in columns
    ]
    rows = []
    for obj in objects:
        cells: list[Any] = [obj["metadata"]["name"]]
        for c in columns:
            value = _json_path(obj, c["jsonPath"])
            if c.get("type") == "date":
                value = _age(value)
            elif c.get("type", "string") == "string" and value is not None:
                value = str(value)
            cells.append(value)
        meta = {"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1"}
        rows.append({"cells": cells, "object": {**meta, "metadata": obj["metadata"]}})
    return {
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": {"resourceVersion": rv},
        "columnDefinitions": defs,
        "rows": rows,
    }


# ------------------------------------------------------------------------------- the server


def _mutate(request: Any, **changes: Any) -> None:
    # kmock's Request is frozen, and its reactions match on the very same instance: edit it.
    for key, value in changes.items():
        object.__setattr__(request, key, value)


@attrs.define(kw_only=True)
class ApiServer(kmock.KubernetesEmulator):
    validate_builtins: bool = True
    _rv: Iterator[int] = attrs.field(factory=lambda: itertools.count(100), init=False)
    _custom: dict[Any, CustomKind] = attrs.field(factory=dict, init=False)

    def __attrs_post_init__(self) -> None:
        # kubectl refuses watch streams served as application/octet-stream (kmock's default).
        (
            self.fallback[enums.action.WATCH]
            << kmock.headers({"Content-Type": "application/json"})
            << self._serve_watch
        )
        super().__attrs_post_init__()
        with warnings.catch_warnings():  # kmock 0.8 uses a deprecated importlib API here
            warnings.simplefilter("ignore", DeprecationWarning)
            self.resources.load_bundled()

    # -- helpers

    def _next_rv(self) -> str:
        return str(next(self._rv))

    def _stored(self, resource: Any, namespace: str | None, name: str | None) -> dict | None:
        key = (resource, namespace, name)
        if name is None or key not in self.objects or self.objects[key].deleted:
            return None
        return copy.deepcopy(dict(self.objects[key].raw))

    def _has_status(self, resource: Any) -> bool:
        custom = self._custom.get(resource)
        if custom is not None:
            return custom.has_status
        info = self.resources._resources.get(resource)
        return bool(info and "status" in (info.subresources or ()))

    def register_crd(self, crd: Mapping[str, Any]) -> None:
        spec = crd["spec"]
        names = spec["names"]
        for version in spec["versions"]:
            if not version.get("served", True):
                continue
            resource = kmock.resource(spec["group"], version["name"], names["plural"])
            subresources = set(version.get("subresources") or {})
            self.resources[resource] = {
                "kind": names["kind"],
                "singular": names.get("singular", names["kind"].lower()),
                "shortnames": set(names.get("shortNames", [])),
                "categories": set(names.get("categories", [])),
                "verbs": {"create", "delete", "deletecollection", "get", "list", "patch"}
                | {"update", "watch"},
                "subresources": subresources,
                "namespaced": spec.get("scope", "Namespaced") == "Namespaced",
            }
            schema = (version.get("schema") or {}).get("openAPIV3Schema")
            self._custom[resource] = CustomKind(
                names["kind"],
                schema,
                list(version.get("additionalPrinterColumns") or []),
                "status" in subresources,
            )

    # -- admission: what the apiserver does before storing

    def _invalid(self, request: Any, obj: Mapping[str, Any]) -> aiohttp.web.Response | None:
        custom = self._custom.get(request.resource)
        if custom is not None and custom.schema is not None:
            # The apiserver always allows the envelope, declared or not.
            schema = dict(custom.schema)
            envelope = {"apiVersion": {"type": "string"}, "kind": {"type": "string"}}
            envelope["metadata"] = {"type": "object"}
            schema["properties"] = {**envelope, **(schema.get("properties") or {})}
            try:
                jsonschema.validate(obj, strict_schema(schema))
            except jsonschema.ValidationError as exc:
                where = ".".join(str(p) for p in exc.absolute_path) or "<root>"
                return _status(
                    422,
                    "Invalid",
                    f"{custom.kind} {obj['metadata'].get('name')!r} is invalid: "
                    f"{where}: {exc.message}",
                )
        elif self.validate_builtins and obj.get("kind") in VALIDATED_KINDS:
            try:
                kubernetes_validate.validate(dict(obj), K8S_VERSION, strict=True)
            except kubernetes_validate.ValidationError as exc:
                return _status(422, "Invalid", f"{obj.get('kind')} is invalid: {exc}")
        return None

    def _admit_create(self, request: Any) -> aiohttp.web.Response | None:
        obj = request.data
        meta = obj.setdefault("metadata", {})
        if not meta.get("name") and meta.get("generateName"):
            meta["name"] = meta["generateName"] + uuid.uuid4().hex[:5]
        meta["uid"] = str(uuid.uuid4())
        meta["creationTimestamp"] = _now().strftime("%Y-%m-%dT%H:%M:%SZ")
        meta["generation"] = 1
        meta["resourceVersion"] = self._next_rv()
        if request.namespace:
            meta.setdefault("namespace", request.namespace)
        if self._has_status(request.resource):
            obj.pop("status", None)
        custom = self._custom.get(request.resource)
        if custom is not None and custom.schema is not None:
            apply_defaults(obj, custom.schema)
        return self._invalid(request, obj)

    def _admit_update(self, request: Any, old: dict) -> aiohttp.web.Response | None:
        try:
            new = copy.deepcopy(dict(dicts.patch_dict(old, request.data)))
        except Exception as exc:  # a patch that cannot apply (e.g. a bad JSON patch)
            return _status(422, "Invalid", f"cannot apply the patch: {exc}")
        if request.subresource == "status":
            new = {**old, "status": new.get("status")}
            if new["status"] is None:
                del new["status"]
        elif self._has_status(request.resource):
            new.pop("status", None)
            if "status" in old:
                new["status"] = old["status"]
        meta = new.setdefault("metadata", {})
        for frozen in ("uid", "creationTimestamp", "name", "namespace"):
            if frozen in old.get("metadata", {}):
                meta[frozen] = old["metadata"][frozen]
        custom = self._custom.get(request.resource)
        if custom is not None and custom.schema is not None:
            apply_defaults(new, custom.schema)
        content = {k: v for k, v in new.items() if k not in ("metadata", "status")}
        old_content = {k: v for k, v in old.items() if k not in ("metadata", "status")}
        generation = int(old.get("metadata", {}).get("generation", 1))
        meta["generation"] = generation + 1 if content != old_content else generation
        meta["resourceVersion"] = self._next_rv()
        error = self._invalid(request, new)
        if error is None:
            _mutate(request, action=enums.action.UPDATE, data=merge_diff(old, new))
        return error

    async def _handle(self, request: Any) -> aiohttp.web.StreamResponse:
        if request.url.path.startswith("/openapi/"):
            return self._openapi(request.url.path)
        ctype = request.headers.get("Content-Type", "")
        if "protobuf" in ctype or "cbor" in ctype:
            return _status(415, "UnsupportedMediaType", "this test apiserver speaks JSON only")
        if request.resource is None or request.resource.plural is None:
            return await super()._handle(request)
        accept = request.headers.get("Accept", "")
        if "as=Table" in accept and request.action in (enums.action.LIST, enums.action.FETCH):
            return await self._serve_table(request)

        old = self._stored(request.resource, request.namespace, request.name)
        if request.method == enums.method.PUT and isinstance(request.data, dict):
            if old is None:
                return _status(404, "NotFound", f"{request.resource.plural} {request.name!r}")
            replacement = dict(request.data)  # PUT replaces: express it as a merge patch
            _mutate(request, data=merge_diff(old, replacement), action=enums.action.UPDATE)
        elif (
            request.method == enums.method.PATCH and "apply-patch" in ctype and old is None
        ):  # server-side apply of a new object is a create
            _mutate(request, action=enums.action.CREATE, name=None)

        error = None
        if request.action == enums.action.CREATE and isinstance(request.data, dict):
            error = self._admit_create(request)
        elif request.action == enums.action.UPDATE and old is not None:
            error = self._admit_update(request, old)
        if error is not None:
            return error

        response = await super()._handle(request)
        if (
            request.resource == CRD_RESOURCE
            and request.action == enums.action.CREATE
            and response.status < 300
        ):
            self.register_crd(request.data)
        return response

    # -- reading

    async def _serve_list(self, request: Any) -> dict:
        payload = await super()._serve_list(request)
        resource = request.resource
        info = self.resources._resources.get(resource)
        kind = info.kind if info and info.kind else resource.plural.capitalize()
        payload["apiVersion"] = (
            f"{resource.group}/{resource.version}" if resource.group else resource.version
        )
        payload["kind"] = f"{kind}List"
        payload["metadata"] = {"resourceVersion": self._next_rv()}
        payload["items"] = [o for o in payload["items"] if selected(o, request.params)]
        return payload

    async def _serve_watch(self, request: Any) -> Any:
        async for event in super()._serve_watch(request):
            if isinstance(event, dict) and not selected(event.get("object") or {}, request.params):
                continue
            yield event

    async def _serve_table(self, request: Any) -> aiohttp.web.Response:
        if request.name:
            obj = self._stored(request.resource, request.namespace, request.name)
            if obj is None:
                return _status(404, "NotFound", f"{request.resource.plural} {request.name!r}")
            objs = [obj]
        else:
            listing = await self._serve_list(request)
            objs = listing["items"]
        custom = self._custom.get(request.resource)
        columns = [c for c in (custom.columns if custom else []) if c.get("name") != "Name"]
        if not custom:
            columns = [{"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"}]
        return aiohttp.web.json_response(table(objs, columns, self._next_rv()))

    async def _serve_version(self, request: Any) -> dict:
        payload = await super()._serve_version(request)
        payload["groupVersion"] = payload["groupVersion"].lstrip("/")  # kmock says "/v1"
        for res in payload.get("resources", []):
            if "/" in res["name"]:  # short names and categories belong to the main resource
                res["shortNames"], res["categories"] = [], []
        return payload

    def _openapi(self, path: str) -> aiohttp.web.Response:
        """Enough OpenAPI v3 for kubectl to choose server-side field validation: every group
        version lists PATCH operations that accept ``fieldValidation``. No schemas."""
        versions: dict[str, list[Any]] = {}
        for res in self._get_resources():
            if res.group is None or res.version is None or not isinstance(res.plural, str):
                continue
            gv = f"apis/{res.group}/{res.version}" if res.group else f"api/{res.version}"
            versions.setdefault(gv, []).append(res)
        path = path.rstrip("/")
        if path == "/openapi/v3":
            paths = {gv: {"serverRelativeURL": f"/openapi/v3/{gv}?hash=0"} for gv in versions}
            return aiohttp.web.json_response({"paths": paths})
        gv = path.removeprefix("/openapi/v3/")
        if gv not in versions:
            return _status(404, "NotFound", "no OpenAPI document for this path")
        ops = {}
        for res in versions[gv]:
            info = self.resources._resources.get(res)
            kind = info.kind if info and info.kind else res.plural.capitalize()
            gvk = {"group": res.group, "version": res.version, "kind": kind}
            ops[f"/{gv}/namespaces/{{namespace}}/{res.plural}/{{name}}"] = {
                "patch": {
                    "x-kubernetes-group-version-kind": gvk,
                    "parameters": [
                        {"name": "fieldValidation", "in": "query", "schema": {"type": "string"}}
                    ],
                    "responses": {"200": {"description": "OK"}},
                }
            }
        doc = {"openapi": "3.0.0", "info": {"title": "test apiserver", "version": "v1"}}
        return aiohttp.web.json_response({**doc, "paths": ops})


class Running:
    """The emulator served on 127.0.0.1 from its own thread and event loop, so that blocking
    test code (kubectl subprocesses, polling) never stalls it."""

    def __init__(self) -> None:
        self.server: ApiServer | None = None
        self.url = ""
        self._loop = asyncio.new_event_loop()
        self._stop: asyncio.Event | None = None
        self._started = threading.Event()
        self._thread = threading.Thread(target=self._run, name="apiserver", daemon=True)
        self._error: BaseException | None = None

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_until_complete(self._serve())
        except BaseException as exc:  # surfaced by start()
            self._error = exc
            self._started.set()
        finally:
            self._loop.close()

    async def _serve(self) -> None:
        self._stop = asyncio.Event()
        async with ApiServer() as server, kmock.Server(server, host="127.0.0.1") as http:
            self.server = server
            self.url = str(http.url).rstrip("/")
            self._started.set()
            await self._stop.wait()

    def start(self) -> Running:
        self._thread.start()
        if not self._started.wait(10) or self._error is not None:
            raise RuntimeError(f"the test apiserver did not start: {self._error!r}")
        return self

    def stop(self) -> None:
        if self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)

    def call(self, fn: Any, *args: Any) -> Any:
        """Run ``fn(*args)`` on the server's loop (for reads of its internal state)."""

        async def run() -> Any:
            return fn(*args)

        return asyncio.run_coroutine_threadsafe(run(), self._loop).result(10)

    def requests_by(self, token: str) -> list[tuple[str, str, dict[str, str]]]:
        """(method, path, query) of the requests that authenticated with ``token``."""
        server = self.server
        assert server is not None
        wanted = f"Bearer {token}"
        return self.call(
            lambda: [
                (str(r.method.value), str(r.url.path), dict(r.params))
                for r in server._requests
                if r.headers.get("Authorization") == wanted
            ]
        )

    def requests(self) -> list[tuple[str, str]]:
        """(method, path) of every request served so far."""
        assert self.server is not None
        server = self.server
        return self.call(lambda: [(str(r.method.value), str(r.url.path)) for r in server._requests])
