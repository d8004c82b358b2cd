"""The container image (Dockerfile; it cannot be built on these machines) and the commands it and
the chart run: `graven node`, `graven operator` with the exact arguments the chart renders."""

from __future__ import annotations

import functools
import json
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "Dockerfile"


def _instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        word, _, rest = line.partition(" ")
        out.append((word.upper(), rest.strip()))
    return out


def _stages() -> list[list[tuple[str, str]]]:
    stages: list[list[tuple[str, str]]] = []
    for ins in _instructions():
        if ins[0] == "FROM":
            stages.append([])
        if stages:
            stages[-1].append(ins)
    return stages


def _args() -> dict[str, str]:
    return dict(
        rest.split("=", 1) for word, rest in _instructions() if word == "ARG" and "=" in rest
    )


def _base(stage) -> str:
    image = stage[0][1].split()[0]
    for name, value in _args().items():
        image = image.replace("${" + name + "}", value)
    return image


def test_multi_stage_build_on_slim_python_311():
    stages = _stages()
    assert len(stages) >= 2
    for stage in stages:
        assert re.fullmatch(r"python:3\.11-slim(-\w+)?", _base(stage)), _base(stage)
    build, final = stages[0], stages[-1]
    assert re.search(r"\bAS build\b", build[0][1], flags=re.I)
    assert any(w == "RUN" and "pip wheel" in r for w, r in build)
    # The runtime installs the wheels built in stage 1 from nothing but those wheels.
    run = " ".join(r for w, r in final if w == "RUN")
    assert "from=build" in run and "--no-index" in run


def test_runtime_stage_has_no_build_tools_or_sources():
    final = _stages()[-1]
    text = " ".join(r for _, r in final)
    for tool in ("apt-get", "apk ", "gcc", "build-essential", "make "):
        assert tool not in text, f"runtime stage mentions {tool!r}"
    assert not [r for w, r in final if w in {"COPY", "ADD"} and "--from=" not in r], (
        "runtime stage copies sources from the build context"
    )


def test_runtime_runs_graven_as_a_numeric_non_root_user():
    final = _stages()[-1]
    users = [r for w, r in final if w == "USER"]
    assert users, "no USER in the runtime stage"
    uid, _, gid = users[-1].partition(":")
    assert uid.isdigit() and int(uid) != 0, "USER must be numeric and not root"
    assert not gid or (gid.isdigit() and int(gid) != 0)
    (entry,) = [r for w, r in final if w == "ENTRYPOINT"]
    assert json.loads(entry) == ["graven"], "ENTRYPOINT must be the exec form of `graven`"
    # The chart's pod security context runs the same uid.
    values = (REPO / "charts" / "graven-operator" / "values.yaml").read_text()
    assert f"runAsUser: {uid}" in values


def test_build_context_holds_everything_the_wheel_needs():
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    needed = {pyproject["project"]["readme"], "pyproject.toml"}
    needed |= {d.split("/")[0] for d in pyproject["tool"]["setuptools"]["package-dir"].values()}
    copied = set()
    for word, rest in _stages()[0]:
        if word == "COPY" and "--from=" not in rest:
            copied |= {p.rstrip("/").removeprefix("./") for p in rest.split()[:-1]}
    assert needed <= copied, f"build stage does not COPY {sorted(needed - copied)}"
    for path in copied:
        assert (REPO / path).exists(), f"Dockerfile copies missing {path}"
    ignored = {
        line.strip()
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    assert not needed & ignored, ".dockerignore excludes a file the build needs"
    assert {".git", ".venv"} <= ignored


def test_graven_console_script_is_declared():
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert "graven" in pyproject["project"]["scripts"]


# --- the commands the image and the chart run ---------------------------------------------


def _graven() -> list[str]:
    script = Path(sys.executable).with_name("graven")
    if script.exists():
        return [str(script)]
    found = shutil.which("graven")
    if found:
        return [found]
    pytest.fail("the `graven` console script is not installed (pip install -e .)")


@functools.cache
def _help(*subcommand: str) -> str:
    proc = subprocess.run(
        [*_graven(), *subcommand, "--help"], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def _registered_subcommands() -> set[str]:
    text = _help()
    block = re.search(r"\{([\w,-]+)\}", text)
    listed = set(block.group(1).split(",")) if block else set()
    listed |= set(re.findall(r"^\s{4}(\w[\w-]*)\s", text, flags=re.M))
    return listed


@pytest.mark.parametrize("subcommand", ["node", "operator"])
def test_entrypoint_subcommand_responds_to_help(subcommand):
    if subcommand not in _registered_subcommands():
        pytest.skip(f"`graven {subcommand}` is not registered in graven.node.cli yet")
    assert f"usage: graven {subcommand}" in _help(subcommand)


CHART_VARIANTS = {
    "all-namespaces": {},
    "watch-namespaces": {"watchNamespaces": ["team-a", "team-b"]},
    "health-port": {"operator": {"healthPort": 8081}},
    "metrics": {"metrics": {"enabled": True}},
}


@pytest.mark.parametrize("variant", sorted(CHART_VARIANTS))
def test_operator_accepts_the_arguments_the_chart_renders(helm_chart, variant):
    if "operator" not in _registered_subcommands():
        pytest.skip("`graven operator` is not registered in graven.node.cli yet")
    docs = helm_chart.template(CHART_VARIANTS[variant])
    (dep,) = [d for d in docs if d["kind"] == "Deployment"]
    (container,) = dep["spec"]["template"]["spec"]["containers"]
    args = container["args"]
    if variant == "metrics" and "--metrics-port" not in _help("operator"):
        pytest.skip(
            "`graven operator` has no --metrics-port yet: the chart's metrics.enabled=true "
            "(off by default) would stop the operator until it does"
        )
    # Parse with the real parser: unknown flags and conflicting options exit with status 2.
    code = (
        "import sys\n"
        "from graven.node.cli import build_parser\n"
        "a = build_parser().parse_args(sys.argv[1:])\n"
        "print(a.command)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, f"graven rejects chart args {args}: {proc.stderr}"
    assert proc.stdout.strip() == "operator"
