"""How a client follows a newer configuration (``client.core``, no I/O): which replies make it
refetch /v1/cluster, and which endpoints it keeps afterwards."""

from __future__ import annotations

from graven.node.client.core import Router, doc_version, follow_request, parse_epoch

A, B, C, D = (f"http://127.0.0.1:{p}" for p in (7100, 7101, 7102, 7103))
GATEWAY = "http://127.0.0.1:9000"


def doc(epoch: int, urls: list[str], previous: list[str] | None = None) -> dict:
    out = {
        "cluster": "demo",
        "epoch": epoch,
        "members": [{"name": f"m{u[-1]}", "url": u} for u in urls],
        "layout": {"preset": "paxos"},
    }
    if previous is not None:
        out["previous"] = [
            {"epoch": epoch - 1, "members": [{"name": f"m{u[-1]}", "url": u} for u in previous]}
        ]
    return out


def test_the_header_orders_configurations() -> None:
    assert parse_epoch("3") == (3, 3)
    assert parse_epoch("0, 1") == (1, 0)
    assert parse_epoch(None) is None and parse_epoch("x") is None and parse_epoch("-1") is None
    # publish, retire, publish, retire: each step is newer
    steps = [(0, 0), (1, 0), (1, 1), (2, 1), (2, 2)]
    assert steps == sorted(steps)
    assert doc_version(doc(1, [A], previous=[B])) == (1, 0)


def test_a_newer_reply_makes_the_client_follow_the_live_members() -> None:
    router = Router([A, B, C])
    router.learn(doc(0, [A, B, C]))
    router.saw_epoch(0, (0, 0))
    assert follow_request(router) is None  # the same configuration: nothing to do
    router.saw_epoch(1, (1, 0))  # B serves the transition to epoch 1
    request = follow_request(router)
    assert request is not None and request.via == B and request.path == "/v1/cluster"
    router.learn(doc(1, [A, B, C, D], previous=[A, B, C]))
    assert [e.url for e in router.endpoints] == [A, B, C, D]  # new member added
    assert follow_request(router) is None
    router.saw_epoch(3, (2, 1))
    router.learn(doc(2, [A, D]))  # B and C retired
    assert [e.url for e in router.endpoints] == [A, D]
    assert router.home_of("k") is not None  # routing follows the new layout


def test_an_older_document_changes_nothing() -> None:
    router = Router([A, B])
    router.learn(doc(2, [A, B]))
    router.learn(doc(1, [A, B, C]))  # a member not yet restarted
    assert [e.url for e in router.endpoints] == [A, B] and router.version == (2, 2)


def test_a_client_behind_a_gateway_keeps_it() -> None:
    router = Router([GATEWAY])
    router.learn(doc(0, [A, B, C]))
    router.saw_epoch(0, (1, 0))
    router.learn(doc(1, [A, D], previous=[A, B, C]))
    assert [e.url for e in router.endpoints] == [GATEWAY]  # member URLs may be unreachable
    mixed = Router([A, GATEWAY])
    mixed.learn(doc(0, [A, B]))
    mixed.learn(doc(1, [C, D]))
    assert [e.url for e in mixed.endpoints] == [C, D, GATEWAY]


async def test_smart_client_takes_no_fast_path_while_older_epochs_are_live() -> None:
    """During a transition the new epoch's first set has earlier sets: writing it without
    phase 1 is unsafe, so the smart client sends everything to the gateway until retirement,
    then builds the fast path for the new members."""
    from graven.node.client.smart import SmartClient

    urls = [f"http://127.0.0.1:{p}" for p in (7100, 7101, 7102, 7103)]
    transition = doc(1, urls, previous=urls[:3]) | {"layout": {"preset": "fast"}}
    retired = doc(1, urls) | {"layout": {"preset": "fast"}}
    smart = SmartClient(urls[:3])
    served = [transition]

    async def cluster() -> dict:  # what /v1/cluster would answer (nothing listens there)
        smart.gateway.router.learn(served[-1])
        return served[-1]

    smart.gateway.cluster = cluster  # type: ignore[method-assign]
    try:
        await smart._prepare()
        assert smart._ready and smart._pump is None  # gateway only
        served.append(retired)
        smart.gateway.router.saw_epoch(0, (1, 1))  # a reply announces the retirement
        smart.gateway.router.learn(retired)  # the gateway client follows it
        await smart._prepare()
        assert smart._pump is not None and len(smart._channels) == 4  # fast path, 4 members
    finally:
        await smart.close()


def test_a_client_whose_members_were_all_retired_goes_back_to_its_seeds() -> None:
    """Idle across a transition that retired every member it knew: the seeds (here what a
    discovery file lists today) are added once, and their document is followed."""
    today = [A, B]
    router = Router([C, D], seeds=lambda: today)
    router.learn(doc(1, [C, D]))
    assert router.reseed() and [e.url for e in router.endpoints] == [A, B, C, D]
    assert not router.learned  # /v1/cluster is fetched from them next
    router.learn(doc(2, [A, B]))
    assert [e.url for e in router.endpoints] == [A, B]  # the retired ones are gone
    assert not router.reseed()  # nothing new to add: the failure is reported as it is
    plain = Router([C, D])  # seeds default to the endpoints it was made with
    plain.learn(doc(1, [C, D]))
    assert not plain.reseed()


def test_discovery_seeds_read_the_file_when_called(tmp_path) -> None:
    import json

    from graven.node.client.core import discovery_seeds

    path = tmp_path / "discovery.json"
    seeds = discovery_seeds(path)
    assert seeds() == []  # no file (yet): nothing to add
    path.write_text(json.dumps({"members": [{"name": "m0", "url": A}]}))
    assert seeds() == [A]
    path.write_text("{")
    assert seeds() == []
