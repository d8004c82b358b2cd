"""Which of two cluster documents is newer, and whether a member may install one.

A document's *version* is ``(newest epoch, oldest live epoch)``. Every step of a
reconfiguration makes it larger: ``(0, 0)`` < ``(1, 0)`` (publish: epochs 0 and 1 live) <
``(1, 1)`` (retire: epoch 1 alone) < ``(2, 1)`` < ... The clients order the ``Graven-Epoch``
header the same way (``client.core.Version``). Two documents of one version must be the same
configuration (each live epoch's members and layout; URLs and limits aside): the version says
which registers mean what, so a different configuration under the same version is refused,
never silently swapped in.
"""

from __future__ import annotations

import json

from .config import ClusterConfig

Version = tuple[int, int]

SAME, NEWER = "same", "newer"


class InstallRefused(Exception):
    """A document this member must not install; nothing was changed.

    ``code`` is the JSON error code the member answers with (409 for each)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def version(cfg: ClusterConfig) -> Version:
    return cfg.epoch, min([cfg.epoch, *(p.epoch for p in cfg.previous)])


def describe(v: Version) -> str:
    newest, oldest = v
    if newest == oldest:
        return f"epoch {newest}"
    return f"epochs {', '.join(str(e) for e in range(oldest, newest + 1))}"


def shape(cfg: ClusterConfig) -> list[tuple[int, list[str], str]]:
    """What must agree between two documents of one version: each live epoch's members (in
    order) and layout, which give registers their meaning. URLs and limits may differ (a
    member reached at another address, a test's port mapping): a document that differs only
    there is the same configuration, and the one served stays."""
    epochs = [(p.epoch, p.members, p.layout) for p in cfg.previous]
    epochs.append((cfg.epoch, cfg.members, cfg.layout))
    return [
        (epoch, [m.name for m in members], json.dumps(layout.to_spec(), sort_keys=True))
        for epoch, members, layout in epochs
    ]


def compare(current: ClusterConfig, offered: ClusterConfig) -> str:
    """``SAME`` (idempotent re-install) or ``NEWER``; raises InstallRefused otherwise."""
    if offered.cluster != current.cluster:
        raise InstallRefused(
            "other_cluster",
            f"the document is of cluster {offered.cluster!r}, this member serves "
            f"{current.cluster!r}",
        )
    if offered.incarnation != current.incarnation:
        raise InstallRefused(
            "other_incarnation",
            f"the document is of cluster incarnation {offered.incarnation}, this member serves "
            f"incarnation {current.incarnation}; a member never changes incarnation",
        )
    have, got = version(current), version(offered)
    if got < have:
        raise InstallRefused(
            "stale_configuration",
            f"the document ({describe(got)}) is older than the one this member serves "
            f"({describe(have)}); a member never goes back",
        )
    if got == have:
        if shape(offered) != shape(current):
            raise InstallRefused(
                "configuration_conflict",
                f"this member serves another configuration under the same {describe(have)}; "
                "a different configuration needs a newer epoch",
            )
        return SAME
    return NEWER


def newer_of(file_cfg: ClusterConfig, persisted: ClusterConfig | None) -> ClusterConfig:
    """At start-up: the persisted document when it is strictly newer than the file's (and of
    the same cluster and incarnation); otherwise the file (which may also change limits)."""
    if persisted is None:
        return file_cfg
    if (persisted.cluster, persisted.incarnation) != (file_cfg.cluster, file_cfg.incarnation):
        return file_cfg  # another incarnation's data: the store refuses it with the file's
    return persisted if version(persisted) > version(file_cfg) else file_cfg
