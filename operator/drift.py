"""Compare a live child with its render and build the patch that repairs the difference.

"Desired is contained in live" is the test, not equality: the apiserver adds defaults
(``protocol: TCP``, ``terminationMessagePath``, cluster IPs...) and canonicalises quantities
(``1024Mi`` may come back as ``1Gi``); neither is drift. Only fields the apiserver lets us
change are patched; a difference in an immutable field is reported, never "fixed" by deleting
and recreating a StatefulSet under a running consensus cluster.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

from . import names

# Per kind: top-level paths the operator owns and may patch.
MUTABLE: dict[str, tuple[tuple[str, ...], ...]] = {
    "ConfigMap": (("data",),),
    "Service": (
        ("spec", "type"),
        ("spec", "selector"),
        ("spec", "ports"),
        ("spec", "publishNotReadyAddresses"),
    ),
    "StatefulSet": (
        ("spec", "replicas"),
        ("spec", "updateStrategy"),
        ("spec", "persistentVolumeClaimRetentionPolicy"),
        ("spec", "template"),
    ),
    "PodDisruptionBudget": (("spec",),),
    "ServiceMonitor": (("spec",),),
    "PrometheusRule": (("spec",),),
    "Certificate": (("spec",),),  # cert-manager.io/v1
    "NetworkPolicy": (("spec",),),
}
# Kinds whose owned paths must equal the render, not just contain it: in a NetworkPolicy a
# key added by hand (a namespaceSelector beside a podSelector, an egress section) widens or
# changes who may connect. The apiserver defaults nothing in the spec the operator renders.
EXACT = frozenset({"NetworkPolicy"})
# Fields the apiserver refuses to change after creation.
IMMUTABLE: dict[str, tuple[tuple[str, ...], ...]] = {
    "Service": (("spec", "clusterIP"),),
    "StatefulSet": (
        ("spec", "selector"),
        ("spec", "serviceName"),
        ("spec", "podManagementPolicy"),
        ("spec", "volumeClaimTemplates"),
    ),
}
_INCARNATION_LABEL_PATH = f"metadata.labels.{names.GROUP}/incarnation"


def _identity_record(path: str) -> bool:
    """A claim template's identity label or annotations (see identity.py): claim templates
    made before incarnations were recorded lack them, which is not drift (they cannot change,
    and the members' stores know their own identity)."""
    if not path.startswith("spec.volumeClaimTemplates["):
        return False
    return path.endswith(_INCARNATION_LABEL_PATH) or ".metadata.annotations" in path


# Optional pod-spec fields the operator owns: absent from the render means "remove".
OWNED_OPTIONAL_POD_FIELDS = ("affinity", "tolerations", "imagePullSecrets")
# Label and annotation keys the operator owns on its children and their pod templates: one
# it no longer renders is removed (a JSON merge patch only removes keys it sets to null, so
# "want is contained in live" alone would keep e.g. a stale version label forever).
OWNED_LABELS = frozenset(
    {
        names.LABEL_NAME,
        names.LABEL_INSTANCE,
        names.LABEL_COMPONENT,
        names.LABEL_PART_OF,
        names.LABEL_MANAGED_BY,
        names.LABEL_VERSION,
    }
)
OWNED_ANNOTATION_PREFIX = f"{names.GROUP}/"

_QUANTITY = re.compile(r"^([+-]?[0-9.]+)([eE][+-]?[0-9]+|[numkMGTPE]|[KMGTPE]i)?$")
_SUFFIX = {
    "n": Fraction(1, 10**9),
    "u": Fraction(1, 10**6),
    "m": Fraction(1, 1000),
    "": Fraction(1),
    "k": Fraction(10**3),
    "M": Fraction(10**6),
    "G": Fraction(10**9),
    "T": Fraction(10**12),
    "P": Fraction(10**15),
    "E": Fraction(10**18),
    "Ki": Fraction(2**10),
    "Mi": Fraction(2**20),
    "Gi": Fraction(2**30),
    "Ti": Fraction(2**40),
    "Pi": Fraction(2**50),
    "Ei": Fraction(2**60),
}


def quantity(value: Any) -> Fraction | None:
    """A Kubernetes resource quantity as an exact number; None if it is not one."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return Fraction(value)
    if not isinstance(value, str):
        return None
    m = _QUANTITY.match(value.strip())
    if not m:
        return None
    try:
        number = Fraction(m.group(1))
    except (ValueError, ZeroDivisionError):
        return None
    suffix = m.group(2) or ""
    if suffix[:1] in ("e", "E"):
        return number * Fraction(10) ** int(suffix[1:])
    return number * _SUFFIX[suffix]


def _same_scalar(want: Any, have: Any) -> bool:
    if want == have and type(want) is type(have):
        return True
    a, b = quantity(want), quantity(have)
    return a is not None and a == b and isinstance(want, str | int) and isinstance(have, str | int)


def differences(
    want: Any, have: Any, path: str = "", ignore: frozenset[str] = frozenset()
) -> list[str]:
    """Paths where ``want`` is not contained in ``have`` (dicts: subset; lists: same length),
    leaving out the paths in ``ignore``."""
    return [p for p in _differences(want, have, path) if p not in ignore]


def _differences(want: Any, have: Any, path: str = "") -> list[str]:
    if isinstance(want, Mapping):
        if not isinstance(have, Mapping):
            return [path or "."]
        out: list[str] = []
        for key, value in want.items():
            sub = f"{path}.{key}" if path else str(key)
            if key not in have:
                if value not in ({}, [], None):
                    out.append(sub)
                continue
            out.extend(_differences(value, have[key], sub))
        return out
    if isinstance(want, list):
        if not isinstance(have, list) or len(have) != len(want):
            return [path]
        out = []
        for i, (w, h) in enumerate(zip(want, have, strict=True)):
            out.extend(_differences(w, h, f"{path}[{i}]"))
        return out
    return [] if _same_scalar(want, have) else [path]


def _get(obj: Mapping[str, Any], path: tuple[str, ...]) -> Any:
    cur: Any = obj
    for part in path:
        if not isinstance(cur, Mapping) or part not in cur:
            return None
        cur = cur[part]
    return cur


def _put(patch: dict[str, Any], path: tuple[str, ...], value: Any) -> None:
    cur = patch
    for part in path[:-1]:
        cur = cur.setdefault(part, {})
    cur[path[-1]] = value


@dataclass
class Plan:
    """What to do about one live child: a merge patch (None: in sync) and what was found."""

    patch: dict[str, Any] | None = None
    drifted: list[str] = field(default_factory=list)
    immutable: list[str] = field(default_factory=list)


def plan(
    desired: Mapping[str, Any], live: Mapping[str, Any], ignore: frozenset[str] = frozenset()
) -> Plan:
    """``ignore``: paths the apiserver is known to drop (see ``dropped``); they are not drift."""
    kind = desired["kind"]
    result = Plan()
    patch: dict[str, Any] = {}

    for part in ("labels", "annotations"):
        want = desired.get("metadata", {}).get(part) or {}
        have = live.get("metadata", {}).get(part) or {}
        diff = differences(want, have, f"metadata.{part}", ignore)
        removed = _removed_keys(part, want, have)
        if diff or removed:
            result.drifted.extend(diff + [f"metadata.{part}.{k}" for k in removed])
            _put(patch, ("metadata", part), {**dict(want), **dict.fromkeys(removed)})

    for path in MUTABLE.get(kind, ()):
        want, have = _get(desired, path), _get(live, path)
        diff = differences(want, have, ".".join(path), ignore) if want is not None else []
        if path == ("spec", "template"):
            diff.extend(_removed_pod_fields(desired, live))
        exact = kind in EXACT and want is not None
        if exact and not diff and have != want:
            diff = [".".join(path)]  # live has more than the render
        if diff:
            result.drifted.extend(diff)
            _put(patch, path, want)
            if exact and isinstance(have, Mapping):
                # JSON merge patch keeps keys it does not mention (lists are replaced whole)
                _put(patch, path, {**dict.fromkeys(have), **want})
            if path == ("spec", "template"):
                # JSON merge patch keeps keys it does not mention: null removes ours.
                pod_patch = patch["spec"]["template"] = _copy_template(want, have or {})
                for name in OWNED_OPTIONAL_POD_FIELDS:
                    pod_patch["spec"].setdefault(name, None)

    for path in IMMUTABLE.get(kind, ()):
        want, have = _get(desired, path), _get(live, path)
        if want is not None:
            diff = differences(want, have, ".".join(path))
            # Claim templates made before incarnations were recorded lack the label; that is
            # not drift (the claims cannot change, and the members' stores know their own).
            result.immutable.extend(d for d in diff if not _identity_record(d))

    result.patch = patch or None
    return result


def dropped(desired: Mapping[str, Any], stored: Mapping[str, Any]) -> frozenset[str]:
    """Paths of ``desired`` missing from the object the apiserver answered a create or patch
    with: fields it does not know and drops (with a warning, not an error). Patching them again
    can never succeed, so the caller stops calling them drift."""
    return frozenset(plan(desired, stored).drifted)


def _owned_key(part: str, key: str) -> bool:
    return key in OWNED_LABELS if part == "labels" else key.startswith(OWNED_ANNOTATION_PREFIX)


def _removed_keys(part: str, want: Mapping[str, Any], have: Mapping[str, Any]) -> list[str]:
    return sorted(k for k in have if k not in want and _owned_key(part, k))


def _copy_template(template: Mapping[str, Any], live: Mapping[str, Any]) -> dict[str, Any]:
    meta = dict(template.get("metadata") or {})
    live_meta = live.get("metadata") or {}
    for part in ("labels", "annotations"):
        removed = _removed_keys(part, meta.get(part) or {}, live_meta.get(part) or {})
        if removed:
            meta[part] = {**(meta.get(part) or {}), **dict.fromkeys(removed)}
    return {**template, "metadata": meta, "spec": dict(template.get("spec") or {})}


def _removed_pod_fields(desired: Mapping[str, Any], live: Mapping[str, Any]) -> list[str]:
    want = _get(desired, ("spec", "template", "spec")) or {}
    have = _get(live, ("spec", "template", "spec")) or {}
    fields = [
        f"spec.template.spec.{name}"
        for name in OWNED_OPTIONAL_POD_FIELDS
        if name not in want and have.get(name)
    ]
    want_meta = _get(desired, ("spec", "template", "metadata")) or {}
    have_meta = _get(live, ("spec", "template", "metadata")) or {}
    for part in ("labels", "annotations"):
        removed = _removed_keys(part, want_meta.get(part) or {}, have_meta.get(part) or {})
        fields.extend(f"spec.template.metadata.{part}.{k}" for k in removed)
    return fields
