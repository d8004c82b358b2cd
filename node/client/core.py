"""What the sync and async clients share: errors, replies, endpoint order and key routing.

No sockets here, so both clients (and their tests) use exactly the same failover and routing
rules. Routing: a key's *home* member owns its first register set and decides it in one round
trip (paxos-like presets); a request goes there first when that member is one of the client's
endpoints, then to the other endpoints. Endpoints that just refused a connection are tried last
for a short while so a dead first endpoint does not cost every request a failed connect.

Following reconfigurations: every client-API reply names the live epochs of the configuration
its member serves (``Graven-Epoch: 0, 1`` during a transition, ``Graven-Epoch: 1`` once epoch 0
is retired). A reply with a newer configuration than the cluster document the client holds
(a newer epoch, or an older epoch retired) makes
the client fetch ``/v1/cluster`` from that member (``follow_request``) and continue with its
members: the endpoints that were members of the old document are replaced by the live members
of the new one (a retired member's URL goes, new members come); endpoints that were never
members (a gateway, a Service, a port-forward) stay. A request that no endpoint could serve is
tried once more after following.

A client idle while its members were retired (every endpoint it knows refuses or is gone)
goes back to where it started: the *seeds* — the endpoints it was made with, or a function
that names them now (``discovery_seeds``: the members a local cluster's discovery file lists
today; on Kubernetes the client Service, which never moves) — adds those it does not hold,
fetches ``/v1/cluster`` there and follows it (``Router.reseed``), then tries once more.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import orjson

from ..protocol.layout import Layout, LayoutError, key_hash
from ..protocol.presets import build

DECISIONS = "/v1/decisions/"
DEFAULT_TIMEOUT = 10.0  # seconds per request (a long-poll adds its wait on top)
DOWN_FOR = 2.0  # seconds an endpoint that refused a connection goes to the back of the queue
RETRY_ELSEWHERE = frozenset({502, 503})  # this node cannot serve now, another one may


@dataclass(frozen=True, slots=True)
class Decision:
    key: str
    value: str
    won: bool  # True when the decided value is the one this proposal carried


class ClientError(Exception):
    """A request the cluster answered with an error (or could not answer at all).

    ``status`` is the HTTP status (None when no reply came), ``code`` the server's error code.
    """

    def __init__(
        self, code: str, message: str, status: int | None = None, endpoint: str | None = None
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status
        self.endpoint = endpoint

    def __str__(self) -> str:
        return f"{self.message} ({self.code})"


class UnavailableError(ClientError):
    """No endpoint could serve the request: connection failures or 503 from every one."""


@dataclass(frozen=True, slots=True)
class Endpoint:
    url: str  # normalised: scheme://host:port, no trailing slash
    scheme: str
    host: str
    port: int


def parse_endpoint(text: str) -> Endpoint:
    """Validate an endpoint URL (ValueError with a one-line reason)."""
    try:
        parts = urlsplit(text.strip())
        port = parts.port
    except ValueError as exc:
        raise ValueError(f"bad endpoint URL {text!r}: {exc}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"endpoint must be an http(s)://HOST:PORT URL, got {text!r}")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ValueError(f"endpoint must not have a path or query, got {text!r}")
    if port is None:
        port = 443 if parts.scheme == "https" else 80
    host = parts.hostname.lower()
    shown = f"[{host}]" if ":" in host else host
    return Endpoint(f"{parts.scheme}://{shown}:{port}", parts.scheme, host, port)


def decision_path(key: str) -> str:
    """URL path of a key; every byte outside unreserved characters is quoted (``/`` too)."""
    if not isinstance(key, str) or not key:
        raise ClientError("bad_request", "the key must be a non-empty string", 400)
    try:
        raw = key.encode("utf-8")
    except UnicodeEncodeError:
        raise ClientError("bad_request", "the key is not valid UTF-8 text", 400) from None
    return DECISIONS + quote(raw, safe="")


def proposal_body(value: str) -> bytes:
    if not isinstance(value, str):
        raise ClientError("bad_request", "the value must be a string", 400)
    try:
        return orjson.dumps({"value": value})
    except TypeError:  # lone surrogates
        raise ClientError("bad_request", "the value is not valid UTF-8 text", 400) from None


def wait_query(wait: float | None) -> str:
    if not wait:
        return ""  # no wait (the API takes only waits above zero)
    if wait < 0:
        raise ClientError("bad_request", "wait must be a non-negative number of seconds", 400)
    return f"?wait={wait:g}"


def decode(status: int, body: bytes, endpoint: str) -> Any:
    """The JSON of a 2xx reply; any other reply raises ClientError with the server's reason."""
    try:
        doc = orjson.loads(body) if body else None
    except orjson.JSONDecodeError:
        doc = None
    if 200 <= status < 300:
        if doc is None:
            raise ClientError("bad_reply", f"{endpoint} sent a reply that is not JSON", status)
        return doc
    code, message = f"http_{status}", f"{endpoint} answered HTTP {status}"
    error = doc.get("error") if isinstance(doc, Mapping) else None
    if isinstance(error, Mapping):
        code = str(error.get("code") or code)
        message = str(error.get("message") or message)
    raise ClientError(code, message, status, endpoint)


def to_decision(doc: Any, key: str) -> Decision:
    if not isinstance(doc, Mapping) or not isinstance(doc.get("value"), str):
        raise ClientError("bad_reply", f"unexpected reply to a proposal of {key!r}: {doc!r}")
    return Decision(str(doc.get("key", key)), doc["value"], bool(doc.get("won")))


def to_value(doc: Any, key: str) -> str:
    if not isinstance(doc, Mapping) or not isinstance(doc.get("value"), str):
        raise ClientError("bad_reply", f"unexpected reply to a read of {key!r}: {doc!r}")
    return doc["value"]


def unavailable(failures: list[str]) -> UnavailableError:
    return UnavailableError(
        "unavailable", "no endpoint could serve the request: " + "; ".join(failures), None
    )


def to_cluster(doc: Any) -> dict[str, Any]:
    if not isinstance(doc, dict):
        raise ClientError("bad_reply", f"unexpected /v1/cluster reply: {doc!r}")
    return doc


# -- one request, whatever carries it ---------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Request:
    """What a client method asks for; ``read`` turns the reply's JSON into the result."""

    method: str
    path: str
    body: bytes | None
    read: Callable[[Any], Any]
    key: str | None = None  # routes the request to the key's home member first
    via: str | None = None  # an endpoint to try first
    extra: float = 0.0  # seconds on top of the client's timeout (a long poll's wait)
    absent_ok: bool = False  # 404 not_decided is an answer (None), not an error


def propose_request(key: str, value: str, via: str | None = None) -> Request:
    return Request(
        "PUT", decision_path(key), proposal_body(value), lambda d: to_decision(d, key), key, via
    )


def get_request(key: str, wait: float | None = None, via: str | None = None) -> Request:
    path = decision_path(key) + wait_query(wait)
    return Request("GET", path, None, lambda d: to_value(d, key), key, via, wait or 0.0, True)


CLUSTER_REQUEST = Request("GET", "/v1/cluster", None, to_cluster)
EPOCH_HEADER = "Graven-Epoch"


def follow_request(router: Router) -> Request | None:
    """The ``/v1/cluster`` fetch that follows a newer epoch a member announced, from that
    member (it serves at least that epoch); None when nothing newer was announced."""
    if router.announced is None:
        return None
    return Request("GET", "/v1/cluster", None, to_cluster, via=router.announced)


# A configuration's place in time: (newest epoch, oldest live epoch). Each step of a
# transition makes it larger: (0, 0) < (1, 0) publish < (1, 1) retire < (2, 1) < ...
Version = tuple[int, int]


def parse_epoch(text: str | None) -> Version | None:
    """The ``Graven-Epoch`` header's live epochs (None: absent or unreadable)."""
    if not text:
        return None
    try:
        epochs = [int(part) for part in text.split(",")]
    except ValueError:
        return None
    if min(epochs) < 0:
        return None
    return max(epochs), min(epochs)


def doc_version(cluster: Mapping[str, Any]) -> Version | None:
    """The version of a ``/v1/cluster`` document (None: unreadable)."""
    try:
        newest = int(cluster.get("epoch", 0))
        previous = cluster.get("previous") or []
        older = [int(p["epoch"]) for p in previous]
    except (TypeError, ValueError, KeyError):
        return None
    return newest, min([newest, *older])


def needs_learning(router: Router, request: Request, route: bool) -> bool:
    """Fetch /v1/cluster first: routing a key needs the layout and the members."""
    return request.key is not None and route and not router.learned


def learning_failed(router: Router, exc: ClientError) -> None:
    """After a failed /v1/cluster: nobody answers (try again on the next request), or the
    reply is unusable (failover without routing from now on)."""
    if not isinstance(exc, UnavailableError):
        router.learned = True


class RequestPlan:
    """One request's walk over the endpoints, without I/O: the sync and the async client run
    the same plan and differ only in how they exchange bytes with an endpoint.

        plan = RequestPlan(router, request, route, timeout)
        for index, endpoint in plan.attempts():
            try: status, body = <exchange with endpoint, plan.timeout>
            except <no connection, nothing sent>: plan.failed(index, reason); continue
            except <timed out>: raise plan.timed_out(index)
            done, result = plan.answered(index, status, body)
            if done: return result
        raise plan.exhausted()
    """

    def __init__(self, router: Router, request: Request, route: bool, timeout: float) -> None:
        self.router = router
        self.request = request
        self.timeout = timeout + request.extra
        # route=False: the endpoints strictly in the given order (plain failover)
        self._order = router.order(request.key if route else None, request.via)
        self._failures: list[str] = []

    def attempts(self) -> Iterator[tuple[int, Endpoint]]:
        for index in self._order:
            yield index, self.router.endpoints[index]

    def failed(self, index: int, reason: str) -> None:
        """No usable exchange with this endpoint (refused, reset): the next one may serve."""
        self.router.mark_down(index)
        self._failures.append(f"{self.router.endpoints[index].url}: {reason}")

    def timed_out(self, index: int) -> ClientError:
        """The request may still be running there: report it, do not repeat it elsewhere."""
        url = self.router.endpoints[index].url
        return ClientError("timeout", f"{url} did not answer within {self.timeout:g} s")

    def answered(
        self, index: int, status: int, body: bytes, epoch: Version | None = None
    ) -> tuple[bool, Any]:
        """(True, result) when this reply settles the request; (False, None): try the next.
        ``epoch``: the reply's ``Graven-Epoch`` (see ``Router.saw_epoch``)."""
        url = self.router.endpoints[index].url
        self.router.mark_up(index)
        self.router.saw_epoch(index, epoch)
        if status in RETRY_ELSEWHERE:  # this node cannot serve now, another one may
            try:
                decode(status, body, url)
            except ClientError as exc:
                self._failures.append(f"{url}: {exc}")
            return False, None
        try:
            doc = decode(status, body, url)
        except ClientError as exc:
            if self.request.absent_ok and exc.status == 404 and exc.code == "not_decided":
                return True, None
            raise
        return True, self.request.read(doc)

    def exhausted(self) -> UnavailableError:
        return unavailable(self._failures)


Seeds = Callable[[], list[str]]


def discovery_seeds(path: str | Path) -> Seeds:
    """The member URLs a discovery file (``graven up``'s ``DIR/discovery.json``) lists when
    called: a client made from it finds the members of a later configuration."""

    def read() -> list[str]:
        try:
            doc = orjson.loads(Path(path).read_bytes())
            return [str(m["url"]) for m in doc["members"]]
        except (OSError, ValueError, KeyError, TypeError):
            return []  # gone or rewritten under us: no new seeds this time

    return read


class Router:
    """Endpoint order for each request: home member first, endpoints that refused us last."""

    def __init__(
        self, endpoints: list[str], clock: Any = time.monotonic, seeds: Seeds | None = None
    ) -> None:
        if not endpoints:
            raise ValueError("give at least one endpoint URL")
        self.endpoints = list(dict.fromkeys(parse_endpoint(e) for e in endpoints))
        first = [e.url for e in self.endpoints]
        self.seeds: Seeds = seeds if seeds is not None else (lambda: first)
        self.layout: Layout | None = None
        self.home_endpoint: list[int | None] = []  # member index -> endpoint index
        self.learned = False  # /v1/cluster fetched (or found unusable) once
        self.version: Version | None = None  # of the document held (or the first reply's)
        self.announced: str | None = None  # an endpoint that answered with a newer version
        self.generation = 0  # bumped when the endpoints change (clients drop connections)
        self._member_urls: set[str] = set()  # endpoints that are members of ``version``
        self._down_until: dict[int, float] = {}
        self._clock = clock

    def saw_epoch(self, index: int, version: Version | None) -> None:
        """A reply named its member's live epochs: newer than ours means follow them."""
        if version is None:
            return
        if self.version is None:
            self.version = version  # nothing learned yet: this is where we start
        elif version > self.version:
            self.announced = self.endpoints[index].url

    def learn(self, cluster: Any) -> None:
        """Remember the layout and which endpoints are which members (from /v1/cluster); a
        document of a newer epoch than the one held moves the member endpoints to its live
        members."""
        self.learned = True
        if not isinstance(cluster, Mapping) or not isinstance(cluster.get("members"), list):
            return
        self.announced = None  # followed, or the announcer went back: wait for the next one
        version = doc_version(cluster)
        if version is not None and self.version is not None:
            if version < self.version and self.layout is not None:
                return  # an older document than the one held (a member not yet restarted)
            if version > self.version:
                self._follow(cluster)
        if version is not None and (self.version is None or version > self.version):
            self.version = version
        members = [m for m in cluster["members"] if isinstance(m, Mapping)]
        try:
            layout = build(cluster.get("layout"), len(members), int(cluster.get("epoch", 0)))
        except (LayoutError, TypeError, ValueError):
            return  # a layout this client does not understand: no routing, still correct
        by_url = {e.url: i for i, e in enumerate(self.endpoints)}
        home: list[int | None] = []
        for member in members:
            try:
                home.append(by_url.get(parse_endpoint(str(member.get("url"))).url))
            except ValueError:
                home.append(None)
        self.layout, self.home_endpoint = layout, home
        self._member_urls = {self.endpoints[i].url for i in home if i is not None}

    def _follow(self, cluster: Mapping[str, Any]) -> None:
        """Endpoints for a newer epoch: its live members in place of the old members."""
        live: list[Endpoint] = []
        previous = cluster.get("previous")
        for group in [cluster, *(previous if isinstance(previous, list) else ())]:
            found = group.get("members") if isinstance(group, Mapping) else None
            for member in found if isinstance(found, list) else ():
                try:
                    live.append(parse_endpoint(str(member.get("url"))))
                except (ValueError, AttributeError):
                    continue
        # members: of the document held before, or of this one (a client that never learned)
        members = self._member_urls | {e.url for e in live}
        if not live or not any(e.url in members for e in self.endpoints):
            return  # no endpoint is a member (a gateway, a Service): keep talking to it
        others = [e for e in self.endpoints if e.url not in members]
        self.endpoints = list(dict.fromkeys(live + others))
        self._down_until.clear()
        self.generation += 1

    def reseed(self) -> bool:
        """Add the seeds this client does not hold (every endpoint it holds just failed);
        True when there were any: fetch /v1/cluster from them and follow it."""
        held = {e.url for e in self.endpoints}
        fresh = []
        for url in self.seeds():
            try:
                endpoint = parse_endpoint(url)
            except ValueError:
                continue
            if endpoint.url not in held:
                fresh.append(endpoint)
                held.add(endpoint.url)
        if not fresh:
            return False
        self.endpoints = fresh + self.endpoints
        self._down_until.clear()
        self.learned = False
        self.generation += 1
        return True

    def home_of(self, key: str) -> int | None:
        """Endpoint index of the key's home member, when known and among our endpoints."""
        if self.layout is None:
            return None
        # the key's home; on a fast layout the member that would recover the key after a
        # conflict (any member takes the fast path equally well)
        slot = self.layout.leader_slot(key_hash(key))
        if slot is None or slot >= len(self.home_endpoint):
            return None  # spare proposer slots have no node
        return self.home_endpoint[slot]

    def order(self, key: str | None = None, via: str | None = None) -> list[int]:
        """Endpoint indices to try in turn; without a key, the endpoints in the given order."""
        n = len(self.endpoints)
        first = 0
        if key is not None:
            home = self.home_of(key)
            # no home: spread keys over the endpoints so no single node does all the work
            first = home if home is not None else key_hash(key) % n
        if via is not None:
            wanted = parse_endpoint(via).url
            first = next((i for i, e in enumerate(self.endpoints) if e.url == wanted), first)
        ring = [(first + i) % n for i in range(n)]
        now = self._clock()
        up = [i for i in ring if self._down_until.get(i, 0.0) <= now]
        return up + [i for i in ring if i not in up]

    def mark_down(self, index: int) -> None:
        self._down_until[index] = self._clock() + DOWN_FOR

    def mark_up(self, index: int) -> None:
        self._down_until.pop(index, None)
