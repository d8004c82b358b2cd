"""One source of truth for the files the chart ships: crds/ and monitoring/ are edited, the
chart holds byte-identical copies (helm can only read files inside the chart directory), and so
does the operator package for its per-cluster PrometheusRule (package data).
Fix a failure with: bash tools/sync-chart-files.sh"""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "graven-operator"

COPIES = {
    REPO / "monitoring" / "dashboard.json": [CHART / "files" / "dashboard.json"],
    REPO / "monitoring" / "rules.yaml": [
        CHART / "files" / "rules.yaml",
        REPO / "operator" / "rules.yaml",
    ],
}
HINT = "run: bash tools/sync-chart-files.sh"


@pytest.mark.parametrize(
    ("source", "copy"),
    [(source, copy) for source, copies in COPIES.items() for copy in copies],
    ids=lambda p: str(p.relative_to(REPO)),
)
def test_copy_of_monitoring_file_is_identical(source, copy):
    assert copy.is_file() and not copy.is_symlink(), f"{copy} missing; {HINT}"
    assert copy.read_bytes() == source.read_bytes(), f"{copy} differs from {source}; {HINT}"


def test_chart_crds_are_identical_copies_of_crds_dir():
    sources = {p.name: p for p in (REPO / "crds").glob("*.yaml")}
    copies = {p.name: p for p in (CHART / "crds").glob("*")}
    assert set(copies) == set(sources), (
        f"chart crds/ {sorted(copies)} != crds/ {sorted(sources)}; {HINT}"
    )
    for name, src in sources.items():
        assert not copies[name].is_symlink()
        assert copies[name].read_bytes() == src.read_bytes(), f"crds/{name} differs; {HINT}"


def test_the_consensuscluster_crd_ships_with_the_chart():
    if not list((REPO / "crds").glob("*.yaml")):
        pytest.skip("crds/ holds no CRD yet: nothing for the chart to ship")
    assert (CHART / "crds" / "consensusclusters.graven.dev.yaml").is_file()
