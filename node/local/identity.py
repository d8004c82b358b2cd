"""`graven up`'s side of cluster identity: which incarnation a data directory runs, and a check
of the members' stores before any member starts.

The first `graven up` in a data directory picks a random incarnation id and keeps it in
``DIR/cluster.yaml``; later runs reuse it. Member data that belongs to no incarnation this
directory knows (``cluster.yaml`` deleted, member directories copied from elsewhere) is refused
with a message that says how to adopt it (``--adopt ID``: same members and layout only, until
reconfiguration exists) or to wipe it. The members check the same again themselves at start.
"""

from __future__ import annotations

import uuid
from pathlib import Path

from ..cluster.config import ClusterConfig
from ..storage import StoreError
from ..storage.schema import peek
from .cluster import LocalClusterError


def new_incarnation() -> str:
    return str(uuid.uuid4())


def choose(previous: ClusterConfig | None, adopt: str | None, data_dir: Path) -> str:
    """The incarnation to run: the directory's own, an adopted one, or a new one."""
    known = previous.incarnation if previous is not None else None
    if adopt is not None and known is not None and adopt != known:
        raise LocalClusterError(
            f"{data_dir} runs cluster incarnation {known}; --adopt {adopt} names another one "
            "(drop --adopt to run this directory's own cluster)"
        )
    return adopt or known or new_incarnation()


def check_member_data(cfg: ClusterConfig, data_dir: Path, *, fresh: bool) -> None:
    """Refuse member stores that ``cfg`` may not serve (``fresh``: a new incarnation)."""
    for member in cfg.members:
        where = data_dir / member.name
        try:
            found = peek(where)
        except StoreError as exc:
            raise LocalClusterError(str(exc)) from None
        if found is None:
            continue
        _, _, recorded = found
        wipe = f"or delete {data_dir} (every member's registers) to start afresh"
        if fresh or (recorded.incarnation and recorded.incarnation != cfg.incarnation):
            whose = (
                f"cluster incarnation {recorded.incarnation}"
                if recorded.incarnation
                else "a cluster that recorded no incarnation (an older graven)"
            )
            adopt_id = recorded.incarnation or "NEW-ID"
            raise LocalClusterError(
                f"{where} holds registers of {whose}, which this data directory does not "
                f"run{' (its cluster.yaml is gone)' if fresh else ''}; refusing to start a new "
                "cluster over old registers. To adopt them (same members and layout), run "
                f"again with --adopt {adopt_id}; {wipe}"
            )
        if recorded.epoch > cfg.epoch:
            raise LocalClusterError(
                f"{where} has served configuration epoch {recorded.epoch}, newer than this "
                f"configuration's epoch {cfg.epoch}; refusing to go back to an older one"
            )
        if (
            recorded.epoch == cfg.epoch
            and recorded.fingerprint
            and recorded.fingerprint != cfg.fingerprint()
        ):
            raise LocalClusterError(
                f"{where} holds registers written under other members or another layout at "
                f"epoch {cfg.epoch}; adopting them needs the same members and layout as when "
                f"they were written (reconfiguration is not supported yet), {wipe}"
            )
