"""The one renderer of the member configuration: ConsensusCluster spec -> ClusterConfig document.

The operator puts the document in a ConfigMap with each member's in-cluster URL; ``graven up``
writes it with 127.0.0.1 URLs. Members are ``<name>-<i>`` in both, and the document is the same
apart from the URLs, so a node never needs to know where it runs.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .config import API_VERSION, KIND
from .spec import ClusterSpec

# Written out in the document (rather than left to the node's default) so a reader of the
# ConfigMap sees the value limit the members enforce.
DEFAULT_LIMITS = {"maxValueBytes": 1 << 20}


def member_name(cluster: str, index: int) -> str:
    return f"{cluster}-{index}"


def member_config(
    cluster: str,
    spec: ClusterSpec,
    urls: Sequence[str],
    epoch: int = 0,
    incarnation: str | None = None,
) -> dict[str, Any]:
    """The ClusterConfig document every member reads (member index = pod ordinal).

    ``incarnation``: which cluster incarnation this is; members refuse data of any other.
    """
    if len(urls) != spec.replicas:
        raise ValueError(f"{len(urls)} member URLs for {spec.replicas} replicas")
    doc: dict[str, Any] = {"apiVersion": API_VERSION, "kind": KIND, "cluster": cluster}
    if incarnation is not None:
        doc["incarnation"] = incarnation
    return doc | {
        "epoch": epoch,
        "members": [{"name": member_name(cluster, i), "url": url} for i, url in enumerate(urls)],
        "quorums": dict(spec.quorums),
        "limits": {**DEFAULT_LIMITS, **spec.limits},
    }
