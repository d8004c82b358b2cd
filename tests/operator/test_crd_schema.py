"""The CRD: a valid CustomResourceDefinition whose schema accepts the examples and the
operator's own status, refuses bad specs, and defaults exactly like the operator does."""

from __future__ import annotations

import copy
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import yaml

from graven.node.cluster import spec as spec_module
from graven.operator import status
from graven.operator.health import MemberHealth
from graven.operator.layout import check_layout
from graven.operator.topology import Topology
from tests.operator.emulator import apply_defaults, strict_schema
from tests.operator.harness import EXAMPLES, crd_schema, load_crd

EXAMPLE_FILES = sorted(EXAMPLES.glob("*.yaml"))


def admit(obj: dict) -> dict:
    """What the apiserver stores: defaults applied, then validated (unknown fields refused)."""
    obj = copy.deepcopy(obj)
    schema = crd_schema()
    apply_defaults(obj, schema)
    jsonschema.validate(obj, strict_schema(schema))
    return obj


def test_crd_is_a_valid_custom_resource_definition() -> None:
    crd = load_crd()
    kubernetes_validate.validate(crd, "1.33.0", strict=True)
    assert crd["spec"]["names"]["shortNames"] == ["gcc"]
    version = crd["spec"]["versions"][0]
    assert version["name"] == "v1alpha1" and version["storage"] is True
    assert version["subresources"] == {
        "status": {},
        # kubectl scale: the replicas paths and the members' selector the status publishes
        "scale": {
            "specReplicasPath": ".spec.replicas",
            "statusReplicasPath": ".status.replicas",
            "labelSelectorPath": ".status.selector",
        },
    }
    columns = [c["name"] for c in version["additionalPrinterColumns"]]
    assert columns == ["Phase", "Ready", "Layout", "Epoch", "Tolerates", "Age"]


def test_printer_columns_read_declared_status_fields() -> None:
    schema = crd_schema()
    for column in load_crd()["spec"]["versions"][0]["additionalPrinterColumns"]:
        node = schema
        for part in column["jsonPath"].lstrip(".").split("."):
            if node.get("type") == "object" and "properties" not in node:
                break  # metadata: declared by Kubernetes itself
            node = node["properties"][part]


def test_there_are_examples() -> None:
    assert {p.name for p in EXAMPLE_FILES} >= {"cluster.yaml", "fast-5.yaml", "flexible-grid.yaml"}


@pytest.mark.parametrize("path", EXAMPLE_FILES, ids=[p.name for p in EXAMPLE_FILES])
def test_examples_are_valid_and_safe(path: Path) -> None:
    doc = admit(yaml.safe_load(path.read_text()))
    spec = spec_module.parse(doc["spec"])
    verdict = check_layout(spec.quorums, spec.replicas)
    assert verdict.ok, verdict.message
    assert verdict.tolerates is not None and verdict.tolerates >= 1


def test_demo_example_is_three_member_paxos() -> None:
    doc = admit(yaml.safe_load((EXAMPLES / "cluster.yaml").read_text()))
    assert doc["metadata"]["name"] == "demo"
    assert doc["spec"]["replicas"] == 3
    assert doc["spec"]["quorums"] == {"preset": "paxos"}


BAD_SPECS = {
    "zero replicas": {"replicas": 0},
    "17 replicas": {"replicas": 17},
    "unknown preset": {"quorums": {"preset": "raft"}},
    "q1 not a number": {"quorums": {"preset": "flexible", "q1": "two"}},
    "misspelt field": {"replica": 3},
    "unknown quorum field": {"quorums": {"preset": "paxos", "leader": 0}},
    "bad retention": {"storage": {"retention": {"whenDeleted": "Keep"}}},
    "bad pull policy": {"imagePullPolicy": "Sometimes"},
    "bad storage size": {"storage": {"size": "lots"}},
    "bad grid": {"quorums": {"preset": "flexible", "grid": "2by3"}},
    "bad quorum system": {"quorums": {"segments": [{"phase1": {"type": "weird"}}]}},
    "member index too big": {
        "quorums": {"segments": [{"phase2": {"type": "explicit", "sets": [[16]]}}]}
    },
    "bad resource quantity": {"resources": {"limits": {"memory": "a lot"}}},
    "paused not a bool": {"paused": "yes"},
}


@pytest.mark.parametrize("bad", list(BAD_SPECS.values()), ids=list(BAD_SPECS))
def test_bad_specs_are_refused(bad: dict) -> None:
    doc = {
        "apiVersion": "graven.dev/v1alpha1",
        "kind": "ConsensusCluster",
        "metadata": {"name": "bad"},
        "spec": bad,
    }
    with pytest.raises(jsonschema.ValidationError):
        admit(doc)


def test_crd_defaults_match_the_operator_defaults() -> None:
    doc = admit({"apiVersion": "graven.dev/v1alpha1", "kind": "ConsensusCluster", "metadata": {}})
    defaulted = doc["spec"]
    assert defaulted["replicas"] == spec_module.DEFAULT_REPLICAS
    assert defaulted["image"] == spec_module.DEFAULT_IMAGE
    assert defaulted["quorums"] == spec_module.DEFAULT_QUORUMS
    assert defaulted["storage"]["size"] == spec_module.DEFAULT_STORAGE_SIZE
    # Whatever the apiserver fills in, the operator would have assumed the same.
    assert spec_module.parse(defaulted) == spec_module.parse({})


def test_operator_status_fits_the_schema() -> None:
    """A full status as the operator writes it validates against the CRD (strictly)."""
    running = Topology(5, {"preset": "fast"})
    verdict = check_layout(running.quorums, running.members)
    members = [
        MemberHealth(f"x-{i}", i, i != 3, "Ready" if i != 3 else "NotReady") for i in range(5)
    ]
    observed = status.Observed(5, "fast", running, verdict, members, None)
    outcome = status.Outcome(
        2,
        status.Cond(True, "LayoutSafe", "ok"),
        status.Cond(False, status.REFUSED, "replicas 5 -> 7"),
    )
    built = status.build({}, observed, outcome, "2030-01-01T00:00:00Z")
    assert built["fastPathTolerates"] == 1
    doc = {
        "apiVersion": "graven.dev/v1alpha1",
        "kind": "ConsensusCluster",
        "metadata": {"name": "x"},
        "spec": {"replicas": 5, "quorums": {"preset": "fast"}},
        "status": built,
    }
    admit(doc)
    doc["status"]["kopf"] = {"progress": {}}  # what kopf would write without our settings
    with pytest.raises(jsonschema.ValidationError):
        admit(doc)
