"""The rendered cluster configuration document every node reads at start-up.

The operator renders it into a ConfigMap and ``graven up`` writes it locally; both produce the
same document, so a node never needs to know where it runs. Parsing is strict (unknown fields
are errors) because a typo silently ignored in a consensus configuration is a safety hazard.
"""

from __future__ import annotations

import copy
import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

from ..protocol import presets
from ..protocol.epochs import Epoch, View, view
from ..protocol.layout import EPOCH_BITS, Layout, LayoutError
from ..storage.identity import Identity

API_VERSION = "graven.dev/v1alpha1"
KIND = "ClusterConfig"

# The epoch lives in the high bits of a 62-bit register-set id (see protocol.layout).
MAX_EPOCH = (1 << (62 - EPOCH_BITS)) - 1

# DNS-label-like names: they end up in pod names, metric labels and file paths.
_NAME = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")

_TOP_FIELDS = {
    "apiVersion",
    "kind",
    "cluster",
    "incarnation",
    "epoch",
    "members",
    "quorums",
    "limits",
    "previous",
}
# A Kubernetes UID, or the random id `graven up` writes: letters, digits, '.', '_', '-'.
_INCARNATION = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_PREVIOUS_FIELDS = {"epoch", "members", "quorums"}
_MEMBER_FIELDS = {"name", "url"}
_LIMIT_FIELDS = {
    "maxValueBytes": "max_value_bytes",
    "maxKeyBytes": "max_key_bytes",
    "maxBodyBytes": "max_body_bytes",
}


class ConfigError(ValueError):
    """A configuration document that cannot be used; the message is one line."""


@dataclass(frozen=True, slots=True)
class Member:
    name: str
    url: str


@dataclass(frozen=True, slots=True)
class Limits:
    max_value_bytes: int = 1 << 20
    max_key_bytes: int = 512
    max_body_bytes: int = 8 << 20


@dataclass(frozen=True)
class PastEpoch:
    """An older epoch that is still live (a reconfiguration has not retired it yet)."""

    epoch: int
    members: list[Member]
    layout: Layout


@dataclass
class ClusterConfig:
    cluster: str
    epoch: int
    members: list[Member]
    layout: Layout
    limits: Limits = field(default_factory=Limits)
    # Which incarnation of the cluster this is (None: not named, e.g. hand-written test files).
    incarnation: str | None = None

    def fingerprint(self) -> str:
        """Members (in order: indexes own register sets) and layout, which give registers
        their meaning; URLs and limits may change without a new epoch."""
        doc = {"members": [m.name for m in self.members], "quorums": self.layout.to_spec()}
        text = json.dumps(doc, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def identity(self) -> Identity:
        """What a member's store must accept before this configuration may serve it."""
        return Identity(self.incarnation, self.epoch, self.fingerprint())

    previous: list[PastEpoch] = field(default_factory=list)  # older live epochs, oldest first

    def member_index(self, name: str) -> int | None:
        """Index in the newest epoch (None: not a member of it)."""
        for i, member in enumerate(self.members):
            if member.name == name:
                return i
        return None

    def view(self) -> View:
        """The live view: the older live epochs and this one, over member names."""
        epochs = [Epoch(p.epoch, tuple(m.name for m in p.members), p.layout) for p in self.previous]
        epochs.append(Epoch(self.epoch, tuple(m.name for m in self.members), self.layout))
        return view(epochs)

    def live_members(self) -> list[Member]:
        """Every member of a live epoch, in the view's order (the newest epoch's first)."""
        by_name = {m.name: m for p in self.previous for m in p.members}
        by_name.update({m.name: m for m in self.members})
        return [by_name[name] for name in self.view().names]


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _unknown(block: Mapping[str, Any], allowed: set[str], where: str) -> None:
    extra = sorted(str(k) for k in block if k not in allowed)
    if extra:
        raise ConfigError(f"{where}: unknown field(s) {', '.join(extra)}")


def _name(value: Any, where: str) -> str:
    if not isinstance(value, str) or not _NAME.match(value):
        raise ConfigError(
            f"{where} must be a lowercase DNS label (a-z, 0-9, '-', at most 63), got {value!r}"
        )
    return value


def _url(value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise ConfigError(f"{where} must be a string URL, got {value!r}")
    try:
        parts = urlsplit(value)
        port = parts.port  # raises ValueError on a bad port
    except ValueError as exc:
        raise ConfigError(f"{where}: bad URL {value!r}: {_one_line(str(exc))}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"{where} must be an http(s)://HOST[:PORT] URL, got {value!r}")
    if parts.username or parts.password or parts.query or parts.fragment:
        raise ConfigError(f"{where} must not carry credentials, a query or a fragment: {value!r}")
    if parts.path not in ("", "/"):
        raise ConfigError(f"{where} must not have a path, got {value!r}")
    if port == 0:
        raise ConfigError(f"{where}: port 0 is not a reachable port: {value!r}")
    return value.rstrip("/")


def _positive_int(value: Any, where: str, upper: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= upper:
        raise ConfigError(f"{where} must be an integer between 1 and {upper}, got {value!r}")
    return value


def _members(value: Any) -> list[Member]:
    if not isinstance(value, list) or not value:
        raise ConfigError("members must be a non-empty list of {name, url}")
    if len(value) > presets.MAX_MEMBERS:
        raise ConfigError(f"members: at most {presets.MAX_MEMBERS} members, got {len(value)}")
    members: list[Member] = []
    names: set[str] = set()
    urls: set[str] = set()
    for i, item in enumerate(value):
        where = f"members[{i}]"
        if not isinstance(item, Mapping):
            raise ConfigError(f"{where} must be a mapping with name and url")
        _unknown(item, _MEMBER_FIELDS, where)
        for required in ("name", "url"):
            if required not in item:
                raise ConfigError(f"{where}.{required} is required")
        name = _name(item["name"], f"{where}.name")
        url = _url(item["url"], f"{where}.url")
        if name in names:
            raise ConfigError(f"{where}.name: duplicate member name {name!r}")
        if url in urls:
            raise ConfigError(f"{where}.url: duplicate member url {url!r}")
        names.add(name)
        urls.add(url)
        members.append(Member(name, url))
    return members


def _limits(value: Any) -> Limits:
    if value is None:
        return Limits()
    if not isinstance(value, Mapping):
        raise ConfigError("limits must be a mapping")
    _unknown(value, set(_LIMIT_FIELDS), "limits")
    kwargs = {
        attr: _positive_int(value[name], f"limits.{name}", 1 << 30)
        for name, attr in _LIMIT_FIELDS.items()
        if name in value
    }
    limits = Limits(**kwargs)
    if limits.max_body_bytes < limits.max_value_bytes:
        raise ConfigError("limits.maxBodyBytes must be at least limits.maxValueBytes")
    return limits


def parse(doc: Any) -> ClusterConfig:
    """Validate a decoded document and build the configuration (raises ConfigError)."""
    if not isinstance(doc, Mapping):
        raise ConfigError("the configuration must be a mapping at the top level")
    _unknown(doc, _TOP_FIELDS, "config")
    if doc.get("apiVersion") != API_VERSION:
        raise ConfigError(f"apiVersion must be {API_VERSION!r}, got {doc.get('apiVersion')!r}")
    if doc.get("kind") != KIND:
        raise ConfigError(f"kind must be {KIND!r}, got {doc.get('kind')!r}")
    cluster = _name(doc.get("cluster"), "cluster")
    incarnation = doc.get("incarnation")
    if incarnation is not None and (
        not isinstance(incarnation, str) or not _INCARNATION.match(incarnation)
    ):
        raise ConfigError(
            "incarnation must be 1-64 letters, digits, '.', '_' or '-' (a Kubernetes UID or "
            f"the id graven up writes), got {incarnation!r}"
        )
    epoch = doc.get("epoch", 0)
    if isinstance(epoch, bool) or not isinstance(epoch, int) or not 0 <= epoch <= MAX_EPOCH:
        raise ConfigError(f"epoch must be an integer between 0 and {MAX_EPOCH}, got {epoch!r}")
    members = _members(doc.get("members"))
    quorums = doc.get("quorums")
    if quorums is not None and not isinstance(quorums, Mapping):
        raise ConfigError("quorums must be a mapping (a layout block such as {preset: paxos})")
    try:
        # deep copy: the layout keeps the block as its spec, and callers may mutate ``doc``
        layout = presets.build(copy.deepcopy(quorums), len(members), epoch)
    except LayoutError as exc:
        raise ConfigError(f"quorums: {_one_line(str(exc))}") from None
    previous = _previous(doc.get("previous"), epoch, members)
    return ClusterConfig(
        cluster, epoch, members, layout, _limits(doc.get("limits")), incarnation, previous
    )


def _previous(value: Any, epoch: int, members: list[Member]) -> list[PastEpoch]:
    """Older live epochs: consecutive, ending at ``epoch - 1``; a member keeps one URL."""
    if value is None:
        return []
    if not isinstance(value, list):
        raise ConfigError("previous must be a list of {epoch, members, quorums}")
    out: list[PastEpoch] = []
    urls = {m.name: m.url for m in members}
    for i, item in enumerate(value):
        where = f"previous[{i}]"
        if not isinstance(item, Mapping):
            raise ConfigError(f"{where} must be a mapping with epoch, members and quorums")
        _unknown(item, _PREVIOUS_FIELDS, where)
        number = item.get("epoch")
        expected = epoch - len(value) + i
        if number != expected or isinstance(number, bool):
            raise ConfigError(
                f"{where}.epoch must be {expected} (older live epochs are consecutive and end "
                f"just before epoch {epoch}), got {number!r}"
            )
        try:
            past = _members(item.get("members"))
        except ConfigError as exc:
            raise ConfigError(f"{where}.{exc}") from None
        for m in past:
            if urls.setdefault(m.name, m.url) != m.url:
                raise ConfigError(f"{where}: member {m.name!r} has two URLs")
        quorums = item.get("quorums")
        if quorums is not None and not isinstance(quorums, Mapping):
            raise ConfigError(f"{where}.quorums must be a mapping")
        try:
            layout = presets.build(copy.deepcopy(quorums), len(past), number)
        except LayoutError as exc:
            raise ConfigError(f"{where}.quorums: {_one_line(str(exc))}") from None
        out.append(PastEpoch(number, past, layout))
    if len(set(urls.values())) != len(urls):
        raise ConfigError("previous: two members share one URL")
    return out


def dump(cfg: ClusterConfig) -> dict[str, Any]:
    """The document form of ``cfg``; ``parse(dump(cfg))`` gives an equal configuration."""
    doc: dict[str, Any] = {"apiVersion": API_VERSION, "kind": KIND, "cluster": cfg.cluster}
    if cfg.incarnation is not None:
        doc["incarnation"] = cfg.incarnation
    return doc | {
        "epoch": cfg.epoch,
        "members": [{"name": m.name, "url": m.url} for m in cfg.members],
        "quorums": copy.deepcopy(dict(cfg.layout.to_spec())),
        "limits": {name: getattr(cfg.limits, attr) for name, attr in _LIMIT_FIELDS.items()},
        **(
            {
                "previous": [
                    {
                        "epoch": p.epoch,
                        "members": [{"name": m.name, "url": m.url} for m in p.members],
                        "quorums": copy.deepcopy(dict(p.layout.to_spec())),
                    }
                    for p in cfg.previous
                ]
            }
            if cfg.previous
            else {}
        ),
    }


def load(path: str | Path) -> ClusterConfig:
    """Read a YAML (or JSON, a subset of YAML) configuration file."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read configuration {path}: {_one_line(str(exc))}") from None
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {_one_line(str(exc))}") from None
    try:
        return parse(doc)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
