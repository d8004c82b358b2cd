"""`graven cert`: a client certificate with a role, signed by a cluster's CA.

    graven cert --name alice --role read [--data-dir DIR] [--out DIR] [--days N]
    graven cert --name alice --role write --cluster NAME --ca-cert FILE --ca-key FILE [--out DIR]

The first form uses the CA that ``graven up`` keeps in DIR/tls and the cluster name in
DIR/cluster.yaml. The second takes any CA, e.g. a ConsensusCluster's Secret NAME-ca
(``tls.crt``/``tls.key``) exported with kubectl. Writes NAME.crt and NAME.key (mode 0600) into
``--out`` (default: the current directory) and prints their paths.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from ..local import cluster as lc
from ..local import security as local_security
from ..security import pki
from ..security.identity import ROLES
from ..security.pki import LEAF_DAYS


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "cert",
        help="issue a client certificate with a role",
        description="Issue a client certificate (read, write or admin) from a cluster's CA.",
    )
    parser.add_argument("--name", required=True, help="who the certificate is for")
    parser.add_argument("--role", required=True, choices=ROLES, help="read, write or admin")
    parser.add_argument(
        "--data-dir",
        default=lc.DEFAULT_DATA_DIR,
        help=f"a graven up data dir whose CA signs (default {lc.DEFAULT_DATA_DIR})",
    )
    parser.add_argument("--cluster", help="cluster name (with --ca-cert/--ca-key)")
    parser.add_argument("--ca-cert", metavar="FILE", help="CA certificate (PEM)")
    parser.add_argument("--ca-key", metavar="FILE", help="CA private key (PEM)")
    parser.add_argument("--out", default=".", help="directory for NAME.crt and NAME.key")
    parser.add_argument(
        "--days", type=int, default=LEAF_DAYS, help=f"validity (default {LEAF_DAYS})"
    )
    parser.set_defaults(run=run)


def _fail(message: str) -> int:
    print(f"graven cert: error: {message}", file=sys.stderr)
    return 2


def run(args: argparse.Namespace) -> int:
    if args.days < 1:
        return _fail(f"--days must be at least 1, got {args.days}")
    explicit = [args.cluster, args.ca_cert, args.ca_key]
    if any(explicit) and not all(explicit):
        return _fail("--cluster, --ca-cert and --ca-key go together")
    try:
        if all(explicit):
            cluster = args.cluster
            ca = pki.Issued(Path(args.ca_key).read_bytes(), Path(args.ca_cert).read_bytes())
        else:
            data_dir = Path(args.data_dir)
            cfg = lc.previous_config(data_dir)
            if cfg is None:
                return _fail(f"no cluster in {data_dir} (run graven up first, or give --ca-cert)")
            cluster, ca = cfg.cluster, local_security.local_ca(data_dir)
        cert, key = local_security.issue_client_pair(
            ca, cluster, args.role, args.name, Path(args.out), args.days
        )
    except lc.LocalClusterError as exc:
        return _fail(str(exc))
    except FileNotFoundError as exc:
        return _fail(f"cannot read {exc.filename}: no such file (is TLS on for this cluster?)")
    except (OSError, ValueError) as exc:
        return _fail(f"cannot issue: {exc}")
    print(cert)
    print(key)
    return 0
