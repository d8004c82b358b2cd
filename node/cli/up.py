"""`graven up`: run a ConsensusCluster spec locally, one `graven node` process per member.

    graven up [SPEC.yaml] [--data-dir DIR] [--base-port P] [--adopt INCARNATION] [--no-tls]

Members talk mutual TLS with certificates from a CA kept in DIR/tls (created on first start),
and clients need a certificate or token from there (``graven propose`` finds them through the
discovery file). ``--no-tls`` runs plain http with no access control, for debugging only.

Stays in the foreground; Ctrl-C (or SIGTERM) stops every member. Restarting on the same data
directory resumes the cluster with all its decisions. Restarting it with an edited spec (other
replicas or quorums) reconfigures the cluster live once its members are up (publish, fence,
carry-over, retire, recorded in DIR/reconfiguration.json), calling the members with the local
admin client's certificate; new members get theirs before they start. A `graven up` stopped or
killed mid-way finishes the transition when started again. The first run picks the cluster's
incarnation id (kept in DIR/cluster.yaml); member data of another incarnation is refused unless
adopted with ``--adopt`` (same members and layout). Exit status: 0 stopped on request,
1 a member failed to start or every member died, 2 bad input or start-up refused.
"""

from __future__ import annotations

import argparse
import asyncio
import shlex
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..cluster.config import ClusterConfig, dump, parse
from ..cluster.transition import Driver, MemberCalls, ReconfigureError
from ..local import cluster as lc
from ..local import identity as localidentity
from ..local import security as local_security
from ..protocol import reconfig as rc

STATE_FILE = "reconfiguration.json"  # the transition's record (the master's, locally)

if TYPE_CHECKING:
    from ..local.supervisor import Supervisor


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "up",
        help="run a cluster locally (one process per member)",
        description=(
            "Run a ConsensusCluster spec as local processes on 127.0.0.1 and supervise them "
            "until Ctrl-C. Members are <name>-<i> at https://127.0.0.1:<base-port+i>, with "
            "mutual TLS and client authentication (certificates and a token in DIR/tls)."
        ),
    )
    parser.add_argument(
        "spec", nargs="?", metavar="SPEC.yaml", help="ConsensusCluster manifest (default: demo)"
    )
    parser.add_argument(
        "--data-dir",
        default=lc.DEFAULT_DATA_DIR,
        metavar="DIR",
        help=f"where members keep their registers and logs (default: ./{lc.DEFAULT_DATA_DIR})",
    )
    parser.add_argument(
        "--base-port",
        type=int,
        metavar="P",
        help=f"first member's port (default: the last run's, else {lc.DEFAULT_BASE_PORT})",
    )
    parser.add_argument(
        "--adopt",
        metavar="INCARNATION",
        help=(
            "run over member data of that cluster incarnation (named in the refusal), e.g. "
            "after DIR/cluster.yaml was lost; only with the same members and layout"
        ),
    )
    parser.add_argument(
        "--no-tls",
        action="store_true",
        help="debugging only: plain http between members and for clients, no authentication",
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    try:
        supervisor, lock = prepare(args)
    except lc.LocalClusterError as exc:
        print(f"graven up: error: {exc}", file=sys.stderr)
        return 2
    try:
        return asyncio.run(supervisor.run())
    finally:
        lock.release()


def prepare(args: argparse.Namespace) -> tuple[Supervisor, lc.SupervisorLock]:
    """Every check that can refuse the start, before any process is spawned."""
    spec_path = Path(args.spec) if args.spec else lc.default_spec_path()
    spec = lc.load_spec(spec_path)
    data_dir = Path(args.data_dir)
    if data_dir.exists() and not data_dir.is_dir():
        raise lc.LocalClusterError(f"--data-dir {data_dir} exists and is not a directory")
    previous = lc.previous_config(data_dir) if data_dir.is_dir() else None
    base_port = args.base_port
    if base_port is None:
        base_port = lc.previous_base_port(previous) or lc.DEFAULT_BASE_PORT
    incarnation = localidentity.choose(previous, args.adopt, data_dir)
    if not spec.spec.security.tls:
        args.no_tls = True  # the manifest itself switches TLS off
    scheme = "http" if args.no_tls else "https"
    cfg = lc.render(spec, base_port, spec_path, incarnation, scheme)
    transition = None
    if previous is not None:
        # An edited spec (members or layout) is reached by a live reconfiguration, and an
        # unfinished one (a `graven up` stopped or killed mid-way) is resumed first.
        transition = plan_transition(data_dir, previous, cfg)
        if transition is None:  # the same members and layout: keep the data dir's epoch
            doc = dump(cfg)
            doc["epoch"] = previous.epoch
            cfg = parse(doc)
            lc.check_same_cluster(previous, cfg, data_dir)
        else:
            was = previous.members[0].url.partition(":")[0]
            if was != scheme:  # the running members' URLs would not match the new ones
                raise lc.LocalClusterError(
                    f"{data_dir} serves {was} and this start asks for {scheme}: switch TLS on "
                    "or off with the spec unchanged first, then edit the spec"
                )
            cfg = previous  # start what the data dir serves now; the transition goes on from it
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise lc.LocalClusterError(f"cannot create {data_dir}: {exc.strerror}") from None
    lock = lc.SupervisorLock(data_dir)
    lock.acquire()
    try:
        _check_not_running(data_dir)
        # without DIR/cluster.yaml (and no --adopt) any member data is another cluster's
        fresh = previous is None and args.adopt is None
        localidentity.check_member_data(cfg, data_dir, fresh=fresh)
        lc.check_ports_free(cfg)
        config_path = lc.write_config(cfg, data_dir)
        security = None
        if not args.no_tls:
            # every member the transition will start gets its certificate now, before it starts
            names = [m.name for m in cfg.live_members()]
            names += [n for n in (transition.members if transition else ()) if n not in names]
            security = local_security.ensure(data_dir, cfg.cluster, names)
    except BaseException:
        lock.release()
        raise
    from ..local.supervisor import Supervisor  # aiohttp: imported only when a cluster starts

    hint = "graven propose hello world"
    if data_dir.resolve() != Path(lc.DEFAULT_DATA_DIR).resolve():
        hint += f" --data-dir {shlex.quote(str(data_dir))}"
    hint += _path_note()
    supervisor = Supervisor(
        cfg, data_dir, config_path, hint, resumed=previous is not None, security=security
    )
    if transition is not None:
        calls = local_security.admin_calls(security) if security is not None else MemberCalls()
        plan = transition
        supervisor.transition = lambda publish, settle: plan.run(publish, settle, calls)
    return supervisor, lock


@dataclass(frozen=True)
class Transition:
    """What ``plan_transition`` found to do: every member it involves (they need certificates
    before they start), and the run, given the publisher and the orchestrator's credentials."""

    members: tuple[str, ...]
    run: Callable[[Callable[[dict], None], Callable[[dict], None], MemberCalls], str]


def plan_transition(
    data_dir: Path, previous: ClusterConfig, wanted: ClusterConfig
) -> Transition | None:
    """What moves the data dir's cluster to ``wanted`` (None: nothing to do)."""

    state = lc.RecordFile(data_dir / STATE_FILE)
    resumed = Driver.resume(state, lambda doc: None)
    if resumed is None and previous.previous:
        raise lc.LocalClusterError(
            f"{data_dir} serves several epochs but has no unfinished transition in {state.path}"
        )
    if previous.cluster != wanted.cluster:
        raise lc.LocalClusterError(
            f"{data_dir} holds cluster {previous.cluster} but the spec names {wanted.cluster}: "
            "a data dir serves one cluster (use another --data-dir, or delete "
            f"{data_dir} to start afresh)"
        )
    goal = resumed.target if resumed is not None else previous
    if resumed is None and _same_shape(goal, wanted):
        return None
    target = None
    if not _same_shape(goal, wanted):
        doc = dump(wanted)
        doc["epoch"] = goal.epoch + 1
        target = parse(doc)
        if resumed is None:
            try:  # refusals (unsafe layout, too many removals) before anything starts
                Driver(state, previous, target, lambda doc: None)
            except ReconfigureError as exc:
                raise lc.LocalClusterError(f"cannot reconfigure {data_dir}: {exc}") from None

    def run(
        publish: Callable[[dict], None], settle: Callable[[dict], None], call: MemberCalls
    ) -> str:
        done = []
        show = _step_printer()
        if resumed is not None:
            resumed.publish = publish
            resumed.settle = settle
            resumed.call = call
            resumed.progress = show
            resumed.run()
            done.append(f"epoch {resumed.target.epoch}")
        if target is not None:
            # after the one it had to finish, if any
            Driver(
                state,
                goal if resumed is not None else previous,
                target,
                publish,
                call=call,
                settle=settle,
                progress=show,
            ).run()
            done.append(f"epoch {target.epoch}")
        return f"graven up: reconfigured to {' then '.join(done)}"

    involved = [m.name for m in previous.live_members()]
    for cfg in (goal, target):
        if cfg is not None:
            involved += [m.name for m in cfg.members if m.name not in involved]
    return Transition(tuple(involved), run)


def _step_printer() -> Callable[[rc.Record], None]:
    """Prints each step of a transition once, as it starts (details: DIR/reconfiguration.json),
    so that a user sees where a long transition is, not only its end."""
    seen: set[tuple[int, str]] = set()

    def show(record: rc.Record) -> None:
        if (record.to_epoch, record.step) in seen:
            return
        seen.add((record.to_epoch, record.step))
        carried = f" ({record.carried} of {record.total} keys carried)" if record.total else ""
        print(
            f"graven up: epoch {record.from_epoch} -> {record.to_epoch}: {record.step}{carried}",
            flush=True,
        )

    return show


def _same_shape(a: ClusterConfig, b: ClusterConfig) -> bool:
    return [m.name for m in a.members] == [m.name for m in b.members] and dict(
        a.layout.to_spec()
    ) == dict(b.layout.to_spec())


def _path_note() -> str:
    """`make up` runs .venv/bin/graven; say so when a bare `graven` would not be found."""
    script = Path(sys.executable).parent / "graven"
    if shutil.which("graven") is not None or not script.exists():
        return ""
    try:
        shown = script.relative_to(Path.cwd())
    except ValueError:
        shown = script
    return f"\n     (graven is not on your PATH: run {shown}, or activate its virtualenv)"


def _check_not_running(data_dir: Path) -> None:
    doc = lc.read_discovery(data_dir) if lc.discovery_path(data_dir).exists() else None
    if doc is None:
        return
    alive = lc.live_pids(doc)
    if alive:
        pids = ", ".join(str(p) for p in alive)
        raise lc.LocalClusterError(
            f"cluster {doc.get('cluster')} in {data_dir} is already running (pids {pids}); "
            "stop it first (Ctrl-C in its terminal, or kill those pids)"
        )
    lc.remove_discovery(data_dir)  # left behind by a `graven up` that was killed
