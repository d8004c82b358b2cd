"""Read a layout from a YAML file: shared by `graven layout check`, `graven simulate` and the
operator so the three accept exactly the same files.

Accepted shapes (one YAML document, or several of which exactly one is a ConsensusCluster):

- a ConsensusCluster manifest: members = ``spec.replicas`` (default 3), layout = ``spec.quorums``
  (default: None, i.e. the paxos preset);
- a wrapper ``{members: N, quorums: {...layout block...}}``;
- a bare layout block ``{preset: ..., ...}`` or ``{segments: [...]}``, optionally with
  ``members: N`` beside the layout keys.

Members default to 3 everywhere, the same default as the ConsensusCluster resource.
Every problem is raised as ``LayoutError`` with a one-line message naming the file.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from ..protocol.layout import LayoutError

DEFAULT_MEMBERS = 3
CLUSTER_KIND = "ConsensusCluster"


def load_layout_file(path: str | Path) -> tuple[dict | None, int]:
    """Return (layout block or None for the default, members) from a YAML file."""
    doc = _single_document(read_documents(Path(path)), path)
    if "kind" in doc:
        return _from_manifest(doc, path)
    if "quorums" in doc:
        return _from_wrapper(doc, path)
    block = {k: v for k, v in doc.items() if k != "members"}
    return block, _members(doc.get("members", DEFAULT_MEMBERS), path, "members")


def read_documents(path: Path) -> list[Any]:
    """The non-empty YAML documents of a file; LayoutError (one line, naming the file)."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise LayoutError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise LayoutError(f"{path}: cannot read: {exc}") from None
    try:
        docs = list(yaml.safe_load_all(text))
    except yaml.YAMLError as exc:
        # Keep only the first line: the full PyYAML message spans several.
        raise LayoutError(f"{path}: invalid YAML: {_one_line(exc)}") from None
    return [d for d in docs if d is not None]


def _single_document(docs: list[Any], path: str | Path) -> Mapping[str, Any]:
    if len(docs) > 1:
        # A multi-document manifest: pick the one cluster resource in it.
        docs = [d for d in docs if isinstance(d, Mapping) and d.get("kind") == CLUSTER_KIND]
        if len(docs) != 1:
            raise LayoutError(
                f"{path}: several YAML documents; expected exactly one {CLUSTER_KIND} among them"
            )
    if not docs:
        raise LayoutError(f"{path}: the file is empty")
    doc = docs[0]
    if not isinstance(doc, Mapping):
        raise LayoutError(f"{path}: expected a mapping at the top level, got {_kind_of(doc)}")
    return doc


def _from_manifest(doc: Mapping[str, Any], path: str | Path) -> tuple[dict | None, int]:
    if doc["kind"] != CLUSTER_KIND:
        raise LayoutError(f"{path}: kind {doc['kind']!r} is not a {CLUSTER_KIND}")
    spec = doc.get("spec") or {}
    if not isinstance(spec, Mapping):
        raise LayoutError(f"{path}: spec must be a mapping")
    members = _members(spec.get("replicas", DEFAULT_MEMBERS), path, "spec.replicas")
    return _block(spec.get("quorums"), path, "spec.quorums"), members


def _from_wrapper(doc: Mapping[str, Any], path: str | Path) -> tuple[dict | None, int]:
    extra = set(doc) - {"quorums", "members"}
    if extra:
        # Layout keys beside `quorums:` would be silently ignored otherwise.
        raise LayoutError(
            f"{path}: beside 'quorums' only 'members' is allowed, got {sorted(extra, key=str)}"
        )
    members = _members(doc.get("members", DEFAULT_MEMBERS), path, "members")
    return _block(doc["quorums"], path, "quorums"), members


def _block(value: Any, path: str | Path, where: str) -> dict | None:
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise LayoutError(f"{path}: {where} must be a mapping, got {_kind_of(value)}")
    return dict(value)


def _members(value: Any, path: str | Path, where: str) -> int:
    # Range checks belong to config.build; here only the type, so the message names the field.
    if isinstance(value, bool) or not isinstance(value, int):
        raise LayoutError(f"{path}: {where} must be an integer, got {value!r}")
    return value


def _kind_of(value: Any) -> str:
    return {list: "a list", str: "a string"}.get(type(value), type(value).__name__)


def _one_line(exc: yaml.YAMLError) -> str:
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    if mark is not None:
        return f"{problem} (line {mark.line + 1}, column {mark.column + 1})"
    return problem
