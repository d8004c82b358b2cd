"""`make bench` measures Graven: each kind of system it starts serves its load generator.

A product default (TLS on for `graven up`) once made every Graven row of `bench/compare.py`
exit at start-up while the etcd rows still ran; nothing but a person reading the table noticed.
These runs are tiny (a fraction of a second of load) and assert only that rows get measured.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "bench"))

import compare  # noqa: E402
import gravencluster  # noqa: E402
from load import run_loop, run_row  # noqa: E402

from graven.node.client.loadgen import Workload  # noqa: E402

SYSTEMS = sorted(compare.DEFAULT_SYSTEMS)


@pytest.mark.parametrize("key", SYSTEMS)
def test_every_default_system_is_measured(key: str) -> None:
    (_etcd, system) = compare.systems([key], with_graven=True)
    spec = compare.spec_path(system.preset, 3)
    with gravencluster.GravenCluster(spec) as cluster:
        load = Workload(mode="unique", concurrency=2, seconds=0.3)
        row = run_loop(run_row(system.adapter, cluster.endpoints, cluster.pids, load))
    assert row.ops > 0 and row.errors == 0, row.error_samples


def test_tls_cluster_is_measured() -> None:
    """The TLS rows (bench/tls.py) start members the way `graven up` does by default."""
    import tls

    with gravencluster.GravenCluster(tls.SPEC, tls=True) as cluster:
        assert all(url.startswith("https://") for url in cluster.endpoints)
        load = Workload(mode="unique", concurrency=2, seconds=0.3)
        row = tls.measure(tls.graven_adapter(cluster), cluster.endpoints, cluster.pids, load)
    assert row["ops_per_s"] > 0 and row["errors"] == 0


def test_refreshing_the_docs_keeps_the_hand_written_sections(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    docs = tmp_path / "benchmarks.md"
    docs.write_text(f"old tables\n{compare.KEPT_MARKER}\n\n## What TLS costs\nrows\n")
    monkeypatch.setattr(compare, "DOCS", docs)
    monkeypatch.setattr(compare, "DOCS_PLOTS", tmp_path / "plots")
    monkeypatch.setattr(compare.report, "markdown", lambda *a: "new tables\n")
    compare._write_docs([], {}, [])
    assert docs.read_text() == f"new tables\n{compare.KEPT_MARKER}\n\n## What TLS costs\nrows\n"
