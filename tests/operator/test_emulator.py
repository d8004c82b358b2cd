"""The test apiserver behaves like an apiserver where the operator tests rely on it."""

from __future__ import annotations

import pytest

from tests.operator.apiclient import ApiError
from tests.operator.emulator import labels_match
from tests.operator.harness import NAMESPACE, Cluster

NS = NAMESPACE


def configmap(name: str, **labels: str) -> dict:
    meta = {"name": name, "namespace": NS, "labels": labels}
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": meta, "data": {"k": "v"}}


def cr(**spec: object) -> dict:
    return {
        "apiVersion": "graven.dev/v1alpha1",
        "kind": "ConsensusCluster",
        "metadata": {"name": "demo", "namespace": NS},
        "spec": spec,
    }


@pytest.mark.parametrize(
    ("selector", "matches"),
    [
        ("a=1", True),
        ("a==1,b=2", True),
        ("a!=1", False),
        ("a in (1,3)", True),
        ("a notin (1,3)", False),
        ("c", False),
        ("!c", True),
        ("a,b", True),
    ],
)
def test_label_selectors(selector: str, matches: bool) -> None:
    assert labels_match({"a": "1", "b": "2"}, selector) is matches


def test_server_metadata_and_selectors(apiserver: Cluster) -> None:
    api = apiserver.api
    first = api.create(configmap("one", app="x"))
    api.create(configmap("two", app="y"))
    meta = first["metadata"]
    assert meta["uid"] and meta["resourceVersion"] and meta["creationTimestamp"]
    assert [o["metadata"]["name"] for o in api.list("ConfigMap", NS, "app=x")] == ["one"]
    with pytest.raises(ApiError) as err:
        api.create(configmap("one"))
    assert err.value.status == 409


def test_status_subresource_and_generation(apiserver: Cluster, crd: dict) -> None:
    api = apiserver.api
    created = api.create({**cr(replicas=3), "status": {"phase": "Ready"}})
    assert "status" not in created  # status is not taken on create
    assert created["spec"]["image"] == "graven:0.1.0"  # CRD defaults applied
    assert created["metadata"]["generation"] == 1

    patched = api.patch("ConsensusCluster", NS, "demo", {"status": {"phase": "Ready"}})
    assert "status" not in patched  # ...nor on the main endpoint
    patched = api.patch("ConsensusCluster", NS, "demo", {"status": {"phase": "Ready"}}, True)
    assert patched["status"] == {"phase": "Ready"}
    assert patched["metadata"]["generation"] == 1  # status is not a spec change

    patched = api.patch("ConsensusCluster", NS, "demo", {"metadata": {"labels": {"a": "b"}}})
    assert patched["metadata"]["generation"] == 1
    patched = api.patch("ConsensusCluster", NS, "demo", {"spec": {"replicas": 5}})
    assert patched["metadata"]["generation"] == 2


def test_schema_is_enforced(apiserver: Cluster, crd: dict) -> None:
    api = apiserver.api
    api.create(cr())
    with pytest.raises(ApiError) as err:
        api.patch("ConsensusCluster", NS, "demo", {"status": {"phaze": "Ready"}}, True)
    assert err.value.status == 422
    with pytest.raises(ApiError) as err:
        api.patch("ConsensusCluster", NS, "demo", {"spec": {"replicas": "three"}})
    assert err.value.status == 422


def test_builtin_objects_are_validated(apiserver: Cluster) -> None:
    bad = configmap("bad")
    bad["data"] = {"k": 1}  # ConfigMap values must be strings
    with pytest.raises(ApiError) as err:
        apiserver.api.create(bad)
    assert err.value.status == 422
