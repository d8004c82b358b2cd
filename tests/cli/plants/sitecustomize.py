"""A planted weakness for tests/cli/test_up_epochs.py, loaded into `graven up` and its
members through PYTHONPATH: the peer API's allow-list is every member the cluster's CA ever
certified (any member certificate of this cluster), not the members of the live epochs."""

from graven.node.security import access


def _ever_known(ident, cluster, members):  # type: ignore[no-untyped-def]
    return ident is not None and ident.kind == "member" and ident.cluster == cluster


access.member_allowed = _ever_known
