"""Which cluster incarnation and configuration epoch a store's registers belong to.

Registers only mean something under the configuration they were written in. A store therefore
records, next to its registers, the cluster *incarnation* (on Kubernetes the ConsensusCluster's
UID, locally a random id written by the first ``graven up``) and the highest configuration
*epoch* it has served, with a fingerprint of that epoch's members and layout. A member refuses
to start with another incarnation's configuration, an older epoch, or a different configuration
under the same epoch: each would serve old registers under quorums they were not written for
(a cluster deleted and created again over retained volumes, an old ConfigMap, a hand edit).

A raise happens at start-up (a configuration of a newer epoch) or at run time through
``RegisterStore.record_epoch`` (reconfiguration); nothing ever lowers the epoch or changes a
recorded incarnation, and triggers in the file enforce both.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from .errors import StoreError

# meta rows (format 4); '' means "not recorded yet" (a store migrated from format 3 or older)
INCARNATION, EPOCH, EPOCH_CONFIG = "incarnation", "epoch", "epoch_config"


class IdentityRefused(StoreError):
    """The configuration is not one this store may serve; nothing was changed."""


@dataclass(frozen=True, slots=True)
class Identity:
    """What a configuration says about the registers it may serve."""

    incarnation: str | None  # None: the configuration names no incarnation
    epoch: int
    fingerprint: str  # members (in order) and layout of ``epoch``


@dataclass(frozen=True, slots=True)
class Recorded:
    """What a store has recorded ('' = nothing yet)."""

    incarnation: str
    epoch: int
    fingerprint: str

    @classmethod
    def from_meta(cls, meta: Mapping[str, str]) -> Recorded:
        epoch = meta.get(EPOCH, "0")
        return cls(
            meta.get(INCARNATION, ""),
            int(epoch) if epoch.isdigit() else 0,
            meta.get(EPOCH_CONFIG, ""),
        )


def admit(where: str, recorded: Recorded, wanted: Identity) -> dict[str, str]:
    """The meta rows to write so ``wanted`` is recorded; raises IdentityRefused.

    ``where`` names the store in messages (its data directory).
    """
    updates: dict[str, str] = {}
    if recorded.incarnation:
        if wanted.incarnation is None:
            raise IdentityRefused(
                f"{where} holds registers of cluster incarnation {recorded.incarnation}, but the "
                "configuration names no incarnation; refusing to serve them under it"
            )
        if wanted.incarnation != recorded.incarnation:
            raise IdentityRefused(
                f"{where} holds registers of cluster incarnation {recorded.incarnation}, but the "
                f"configuration is of incarnation {wanted.incarnation} (a cluster deleted and "
                "created again over retained data?); refusing to serve old registers under a "
                "new cluster. Adopt the data explicitly (same members and layout) or wipe "
                f"{where}"
            )
    elif wanted.incarnation is not None:
        updates[INCARNATION] = wanted.incarnation
    updates.update(epoch_updates(where, recorded, wanted.epoch, wanted.fingerprint))
    return updates


def epoch_updates(where: str, recorded: Recorded, epoch: int, fingerprint: str) -> dict[str, str]:
    """Rows that raise the recorded epoch to ``epoch``; refuses a lower or a changed one."""
    if epoch < recorded.epoch:
        raise IdentityRefused(
            f"{where} has served configuration epoch {recorded.epoch}; refusing the older "
            f"epoch {epoch} (a stale configuration: a member never goes back to an older one)"
        )
    if epoch == recorded.epoch and recorded.fingerprint and fingerprint != recorded.fingerprint:
        raise IdentityRefused(
            f"{where} has served epoch {epoch} with other members or another layout "
            f"(configuration {recorded.fingerprint}, now {fingerprint}); refusing: a different "
            "configuration needs a new epoch (a reconfiguration), never the same one again"
        )
    if epoch == recorded.epoch and recorded.fingerprint:
        return {}
    return {EPOCH: str(epoch), EPOCH_CONFIG: fingerprint}
