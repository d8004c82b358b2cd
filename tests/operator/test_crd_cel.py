"""The CRD's CEL rules (``x-kubernetes-validations``), evaluated with a real CEL implementation.

No apiserver runs here and the emulator skips CEL, so this file is what shows the rules work:
every rule is found in the schema together with the place it applies to (``self``), every
example passes every rule wherever it applies (after the CRD's defaults, as the apiserver
validates defaulted objects), and every rule is refused by at least one bad spec that the
structural schema alone lets through, with the rule's ``message`` being what the user sees.

The bad specs are cross-checked against the operator: what the rules refuse, the operator's own
checks (``check_name``, ``check_layout``) refuse too, except where the CRD is stricter on purpose.
"""

from __future__ import annotations

import copy
import functools
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import celpy
import celpy.evaluation
import jsonschema
import pytest
import yaml

from graven.node.cluster import spec as spec_module
from graven.operator.layout import INVALID, check_layout
from tests.operator.emulator import apply_defaults, strict_schema
from tests.operator.harness import EXAMPLES, crd_schema

# ------------------------------------------------------------------------ rules in the schema

ANY = "*"  # a list item or a map value (additionalProperties) in a schema path


@dataclass(frozen=True)
class Site:
    """One rule at one place in the schema: ``self`` is the object at ``parts``."""

    parts: tuple[str, ...]
    rule: str
    message: str

    @property
    def path(self) -> str:
        return render(self.parts)

    @property
    def id(self) -> str:
        return f"{self.path}: {self.message}"


def render(parts: tuple[str, ...]) -> str:
    out = ""
    for part in parts:
        if part == ANY:
            out += "[*]"
        elif part.startswith("["):
            out += part
        else:
            out += f".{part}" if out else part
    return out or "<root>"


def collect(schema: dict[str, Any], parts: tuple[str, ...] = ()) -> Iterator[Site]:
    """Every x-kubernetes-validations rule with the schema path of the object it applies to.
    A YAML alias (phase1/phase2 share one quorum-system schema) yields a site per place."""
    for item in schema.get("x-kubernetes-validations") or ():
        yield Site(parts, item["rule"], item.get("message", ""))
    for name, sub in (schema.get("properties") or {}).items():
        yield from collect(sub, (*parts, name))
    for key in ("items", "additionalProperties"):
        if isinstance(schema.get(key), dict):
            yield from collect(schema[key], (*parts, ANY))
    for key in ("allOf", "anyOf", "oneOf"):
        for sub in schema.get(key) or ():
            yield from collect(sub, parts)


SCHEMA = crd_schema()
STRICT = jsonschema.validators.validator_for(strict_schema(SCHEMA))(strict_schema(SCHEMA))
SITES = list(collect(SCHEMA))

# CEL macros are parsed, not looked up as functions.
MACROS = {"has", "all", "exists", "exists_one", "map", "filter"}
SUPPORTED = set(celpy.evaluation.base_functions) | MACROS
_STRING_LITERAL = re.compile(r"'(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\"")
_CALL = re.compile(r"([A-Za-z_]\w*)\s*\(")


def skip_reason(site: Site) -> str | None:
    """Why a rule cannot be evaluated here, or None."""
    code = _STRING_LITERAL.sub("''", site.rule)
    if re.search(r"\boldSelf\b", code):
        return (
            f"{site.id}: transition rule (oldSelf) - runs only on update against the stored "
            "object; not evaluated by these create-time tests"
        )
    missing = sorted(set(_CALL.findall(code)) - SUPPORTED)
    if missing:
        return (
            f"{site.id}: uses {', '.join(f'{m}()' for m in missing)}, Kubernetes CEL "
            "extension(s) that cel-python does not implement"
        )
    return None


EVALUATED = [s for s in SITES if skip_reason(s) is None]
ENV = celpy.Environment()


@functools.cache
def program(rule: str) -> celpy.Runner:
    return ENV.program(ENV.compile(rule))


def places(obj: Any, parts: tuple[str, ...], at: tuple[str, ...] = ()) -> Iterator[tuple]:
    """(concrete path, value) of every object the schema path reaches in ``obj``; a rule on an
    absent field is not evaluated (as in the apiserver)."""
    if not parts:
        yield at, obj
        return
    head, rest = parts[0], parts[1:]
    if head == ANY:
        if isinstance(obj, list):
            for i, item in enumerate(obj):
                yield from places(item, rest, (*at, f"[{i}]"))
        elif isinstance(obj, dict):
            for key, item in obj.items():
                yield from places(item, rest, (*at, f"[{key}]"))
    elif isinstance(obj, dict) and head in obj:
        yield from places(obj[head], rest, (*at, head))


def verdicts(doc: dict) -> Iterator[tuple[Site, str, bool]]:
    """(site, concrete path, passed) for every evaluable rule at every place it applies."""
    for site in EVALUATED:
        for at, value in places(doc, site.parts):
            where = render(at)
            try:
                result = program(site.rule).evaluate({"self": celpy.json_to_cel(value)})
            except celpy.CELEvalError as exc:
                # The apiserver reports an error instead of the message: a bug in the rule.
                raise AssertionError(f"{site.rule!r} did not evaluate at {where}: {exc}") from exc
            assert isinstance(result, celpy.celtypes.BoolType), (site.rule, where, result)
            yield site, where, bool(result)


def refusals(doc: dict) -> dict[str, Site]:
    """What the apiserver would answer, one "field: message" line per failed rule and place."""
    return {f"{where}: {site.message}": site for site, where, ok in verdicts(doc) if not ok}


def admitted(doc: dict) -> dict:
    """Defaults applied and the structural schema passed, as before the apiserver runs CEL."""
    doc = copy.deepcopy(doc)
    apply_defaults(doc, SCHEMA)
    STRICT.validate(doc)
    return doc


def cluster(spec: dict, name: str = "bad") -> dict:
    return {
        "apiVersion": "graven.dev/v1alpha1",
        "kind": "ConsensusCluster",
        "metadata": {"name": name},
        "spec": spec,
    }


# --------------------------------------------------------------------------------- documents

EXAMPLE_DOCS = {
    p.name: d
    for p in sorted(EXAMPLES.glob("*.yaml"))
    if (d := yaml.safe_load(p.read_text())).get("kind") == "ConsensusCluster"
}

MAJORITY = {"type": "majority"}

# Valid specs the examples do not cover (explicit segments, every quorum-system type, every
# preset), so that every rule is also seen to pass; the operator accepts each as safe.
GOOD_SPECS = {
    "all defaults": {},
    "flexible q1/q2": {"replicas": 5, "quorums": {"preset": "flexible", "q1": 4, "q2": 2}},
    "flexible grid by columns": {
        "replicas": 4,
        "quorums": {"preset": "flexible", "grid": "2x2", "phase1": "columns"},
    },
    "fast defaults": {"replicas": 3, "quorums": {"preset": "fast"}},
    "colocated": {"replicas": 3, "quorums": {"preset": "colocated", "allSets": 2}},
    "fixed-majority": {"replicas": 3, "quorums": {"preset": "fixed-majority", "proposers": 2}},
    "explicit segments": {
        "replicas": 4,
        "quorums": {
            "segments": [
                {
                    "sets": 1,
                    "kind": "intersecting",
                    "phase1": {"type": "counting", "size": 4},
                    "phase2": {"type": "counting", "size": 4},
                },
                {
                    "kind": "restricted",
                    "phase1": {"type": "grid", "rows": 2, "columns": 2, "by": "rows"},
                    "phase2": {"type": "grid", "rows": 2, "columns": 2, "by": "columns"},
                },
            ]
        },
    },
    "explicit quorum sets": {
        "replicas": 3,
        "quorums": {
            "segments": [
                {
                    "phase1": {"type": "explicit", "sets": [[0, 1], [1, 2], [0, 2]]},
                    "phase2": {"type": "explicit", "sets": [[0, 1], [1, 2], [0, 2]]},
                },
            ]
        },
    },
}


@dataclass(frozen=True)
class Bad:
    spec: dict
    refused: set[str]  # the exact "field: message" lines the rules answer
    name: str = "bad"
    operator_refuses: bool = True  # the operator's own check refuses it too


def segments(*segs: dict) -> dict:
    return {"replicas": 3, "quorums": {"segments": list(segs)}}


Q1 = "spec: quorums.q1 must be between 1 and replicas"
Q2 = "spec: quorums.q2 must be between 1 and replicas"
FAST = "spec: quorums.fastQuorum must be between 1 and replicas"
CLASSIC = "spec: quorums.classicQuorum must be between 1 and replicas"
ONE_OF = "spec.quorums: give either a preset or explicit segments"
GRID = "spec.quorums: grid is a parameter of preset flexible"
Q1Q2 = "spec.quorums: q1 and q2 are parameters of preset flexible"
GRID_OR_Q = "spec.quorums: flexible takes either q1/q2 or grid, not both"
PHASE1 = "spec.quorums: phase1 (rows or columns) only applies to a grid"
FAST_PARAMS = "spec.quorums: fastQuorum and classicQuorum are parameters of preset fast"
ALL_SETS = "spec.quorums: allSets is a parameter of preset colocated"
NAME = (
    "<root>: the name must be a DNS label of at most 45 characters: it becomes member host "
    "names (NAME-0.NAME-peers) and StatefulSet revision labels"
)
COUNTING = "a counting quorum system needs size"
GRID_SYSTEM = "a grid quorum system needs rows and columns"
EXPLICIT = "an explicit quorum system needs sets"

BAD_SPECS = {
    "name with capitals": Bad({}, {NAME}, name="Demo"),
    "name of 46 characters": Bad({}, {NAME}, name="a" * 46),
    "name ending in a hyphen": Bad({}, {NAME}, name="demo-"),
    "name with a dot": Bad({}, {NAME}, name="demo.one"),
    "q1 > replicas": Bad({"replicas": 3, "quorums": {"preset": "flexible", "q1": 4}}, {Q1}),
    # replicas defaults to 3: the rule sees the defaulted value.
    "q1 > defaulted replicas": Bad({"quorums": {"preset": "flexible", "q1": 4, "q2": 1}}, {Q1}),
    "q2 > replicas": Bad({"replicas": 3, "quorums": {"preset": "flexible", "q2": 5}}, {Q2}),
    "fastQuorum > replicas": Bad(
        {"replicas": 3, "quorums": {"preset": "fast", "fastQuorum": 4}}, {FAST}
    ),
    "classicQuorum > replicas": Bad(
        {"replicas": 5, "quorums": {"preset": "fast", "classicQuorum": 6}}, {CLASSIC}
    ),
    "preset and segments": Bad(
        {"quorums": {"preset": "paxos", "segments": [{"phase1": MAJORITY}]}}, {ONE_OF}
    ),
    # The operator would take a preset-less block as paxos; the CRD asks for it explicitly.
    "neither preset nor segments": Bad(
        {"quorums": {"proposers": 2}}, {ONE_OF}, operator_refuses=False
    ),
    "grid with preset paxos": Bad(
        {"replicas": 6, "quorums": {"preset": "paxos", "grid": "2x3"}}, {GRID}
    ),
    "grid with segments": Bad(
        {"replicas": 6, "quorums": {"grid": "2x3", "segments": [{"phase1": MAJORITY}]}}, {GRID}
    ),
    "q1 with preset fast": Bad({"quorums": {"preset": "fast", "q1": 2}}, {Q1Q2}),
    "q2 with preset paxos": Bad({"quorums": {"preset": "paxos", "q2": 2}}, {Q1Q2}),
    "grid and q1": Bad(
        {"replicas": 6, "quorums": {"preset": "flexible", "grid": "2x3", "q1": 2}}, {GRID_OR_Q}
    ),
    "phase1 without grid": Bad(
        {"quorums": {"preset": "flexible", "q1": 2, "phase1": "rows"}}, {PHASE1}
    ),
    "fastQuorum with preset flexible": Bad(
        {"quorums": {"preset": "flexible", "fastQuorum": 3}}, {FAST_PARAMS}
    ),
    "classicQuorum with preset paxos": Bad(
        {"quorums": {"preset": "paxos", "classicQuorum": 2}}, {FAST_PARAMS}
    ),
    "allSets with preset paxos": Bad({"quorums": {"preset": "paxos", "allSets": 2}}, {ALL_SETS}),
    "counting without size (phase 1)": Bad(
        segments({"phase1": {"type": "counting"}}),
        {f"spec.quorums.segments[0].phase1: {COUNTING}"},
    ),
    "counting without size (phase 2, second segment)": Bad(
        segments({"sets": 1}, {"phase2": {"type": "counting"}}),
        {f"spec.quorums.segments[1].phase2: {COUNTING}"},
    ),
    "grid without columns (phase 1)": Bad(
        segments({"phase1": {"type": "grid", "rows": 1}}),
        {f"spec.quorums.segments[0].phase1: {GRID_SYSTEM}"},
    ),
    "grid without rows (phase 2)": Bad(
        segments({"phase2": {"type": "grid", "columns": 3}}),
        {f"spec.quorums.segments[0].phase2: {GRID_SYSTEM}"},
    ),
    "explicit without sets (both phases)": Bad(
        segments({"phase1": {"type": "explicit"}, "phase2": {"type": "explicit"}}),
        {
            f"spec.quorums.segments[0].phase1: {EXPLICIT}",
            f"spec.quorums.segments[0].phase2: {EXPLICIT}",
        },
    ),
}


@functools.cache
def valid_verdicts() -> list[tuple[Site, str, bool]]:
    docs = [*EXAMPLE_DOCS.values(), *(cluster(s, "good") for s in GOOD_SPECS.values())]
    return [v for doc in docs for v in verdicts(admitted(doc))]


@functools.cache
def bad_refusals() -> dict[str, dict[str, Site]]:
    return {case: refusals(admitted(cluster(b.spec, b.name))) for case, b in BAD_SPECS.items()}


# ------------------------------------------------------------------------------------- tests


def test_rules_are_found_where_they_apply() -> None:
    paths = {s.path for s in SITES}
    assert paths >= {
        "<root>",
        "spec",
        "spec.quorums",
        "spec.quorums.segments[*].phase1",
        "spec.quorums.segments[*].phase2",
    }
    assert len(SITES) >= 18
    for site in SITES:
        # Without a message the apiserver shows the rule's source to the user.
        assert site.message.strip(), f"{site.path}: rule {site.rule!r} has no message"
        program(site.rule)  # compiles


def test_there_are_examples() -> None:
    assert len(EXAMPLE_DOCS) >= 3


@pytest.mark.parametrize("name", list(EXAMPLE_DOCS))
def test_examples_pass_every_rule(name: str) -> None:
    doc = admitted(EXAMPLE_DOCS[name])
    assert list(verdicts(doc)), "no rule applied"
    assert refusals(doc) == {}


@pytest.mark.parametrize("name", list(GOOD_SPECS))
def test_valid_specs_pass_every_rule_and_the_operator(name: str) -> None:
    doc = admitted(cluster(GOOD_SPECS[name], "good"))
    assert refusals(doc) == {}
    spec = spec_module.parse(doc["spec"])
    verdict = check_layout(spec.quorums, spec.replicas)
    assert verdict.ok, verdict.message


@pytest.mark.parametrize("case", list(BAD_SPECS))
def test_bad_spec_fails_its_rule(case: str) -> None:
    """Only CEL catches it (the structural schema admits it), with exactly these messages."""
    assert set(bad_refusals()[case]) == BAD_SPECS[case].refused


@pytest.mark.parametrize("case", list(BAD_SPECS))
def test_the_operator_refuses_what_the_rules_refuse(case: str) -> None:
    bad = BAD_SPECS[case]
    doc = admitted(cluster(bad.spec, bad.name))
    try:
        spec_module.check_name(doc["metadata"]["name"])
        spec = spec_module.parse(doc["spec"])
        verdict = check_layout(spec.quorums, spec.replicas)
        refused, why = not verdict.ok, verdict.message
        if refused:
            assert verdict.reason == INVALID, verdict.message  # malformed, not merely unsafe
    except spec_module.SpecError as exc:
        refused, why = True, str(exc)
    assert refused == bad.operator_refuses, why


@pytest.mark.parametrize("site", SITES, ids=[s.id for s in SITES])
def test_every_rule_passes_and_fails(site: Site) -> None:
    reason = skip_reason(site)
    if reason:
        pytest.skip(reason)
    seen = {ok for s, _, ok in valid_verdicts() if s == site}
    assert seen == {True}, f"no valid document reaches {site.path}"
    failed = [case for case, lines in bad_refusals().items() if site in lines.values()]
    assert failed, f"no bad spec makes {site.id!r} fail"


@pytest.mark.parametrize(
    "name", ["demo", "a", "a" * 45, "a" * 46, "", "Demo", "-demo", "1demo", "de_mo", "de--mo"]
)
def test_name_rule_agrees_with_the_operator(name: str) -> None:
    (site,) = [s for s in EVALUATED if s.path == "<root>"]
    cel_ok = bool(program(site.rule).evaluate({"self": celpy.json_to_cel(cluster({}, name))}))
    try:
        spec_module.check_name(name)
        operator_ok = True
    except spec_module.SpecError:
        operator_ok = False
    assert cel_ok == operator_ok


@pytest.mark.parametrize("field", ["q1", "q2", "fastQuorum", "classicQuorum"])
def test_lower_bound_of_quorum_sizes_is_the_schema_minimum(field: str) -> None:
    """The "between 1 and replicas" messages: 1 is the structural minimum, CEL adds replicas."""
    with pytest.raises(jsonschema.ValidationError):
        admitted(cluster({"quorums": {"preset": "flexible", field: 0}}))
