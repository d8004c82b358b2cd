"""Probing members for `graven status`: readiness with its round-trip time, decision counts.

Plain blocking ``http.client`` per member (run in threads), independent of the client's
failover: status must show each member as it is, not the cluster as a whole.
"""

from __future__ import annotations

import http.client
import json
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from typing import Any

from .core import parse_endpoint
from .credentials import Credentials

PROBE_TIMEOUT = 2.0  # seconds per request to one member
DECISIONS_METRIC = "graven_decisions_total"


@dataclass
class MemberState:
    name: str
    url: str
    state: str = "down"  # up | not ready | down
    latency_ms: float | None = None  # one /readyz round trip on an open connection
    decisions: int | None = None  # sum of graven_decisions_total on that member
    error: str | None = None

    @property
    def up(self) -> bool:
        return self.state == "up"

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "up": self.up}


def probe_all(
    members: list[tuple[str, str]], credentials: Credentials | None = None
) -> list[MemberState]:
    if not members:
        return []
    creds = credentials or Credentials()
    with ThreadPoolExecutor(max_workers=min(16, len(members))) as pool:
        return list(pool.map(lambda m: probe(*m, creds), members))


def probe(name: str, url: str, credentials: Credentials | None = None) -> MemberState:
    result = MemberState(name, url)
    try:
        endpoint = parse_endpoint(url)
    except ValueError as exc:
        result.error = str(exc)
        return result
    creds = credentials or Credentials()
    conn: http.client.HTTPConnection
    if endpoint.scheme == "https":
        tls = creds.tls()
        conn = http.client.HTTPSConnection(
            endpoint.host, endpoint.port, timeout=PROBE_TIMEOUT, context=tls() if tls else None
        )
    else:
        conn = http.client.HTTPConnection(endpoint.host, endpoint.port, timeout=PROBE_TIMEOUT)
    auth = creds.headers()
    try:
        conn.connect()  # connect first so the timed round trip is the request alone
        started = time.perf_counter()
        status, body = _get(conn, "/readyz")
        result.latency_ms = round((time.perf_counter() - started) * 1000.0, 3)
        if status == 200:
            result.state = "up"
        else:
            result.state = "not ready"
            result.error = _error_message(body) or f"/readyz answered HTTP {status}"
        status, body = _get(conn, "/metrics", auth)  # /metrics needs the read role
        if status == 200:
            result.decisions = decisions_from_metrics(body.decode("utf-8", "replace"))
    except ConnectionRefusedError:
        result.error = "connection refused"
    except TimeoutError:
        result.error = f"no answer within {PROBE_TIMEOUT:g} s"
    except (OSError, http.client.HTTPException) as exc:
        result.error = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
    finally:
        conn.close()
    return result


def _get(
    conn: http.client.HTTPConnection, path: str, headers: dict[str, str] | None = None
) -> tuple[int, bytes]:
    conn.request("GET", path, headers=headers or {})
    resp = conn.getresponse()
    return resp.status, resp.read()


def _error_message(body: bytes) -> str | None:
    try:
        doc = json.loads(body)
        return str(doc["error"]["message"])
    except (ValueError, KeyError, TypeError):
        return None


def decisions_from_metrics(text: str) -> int | None:
    """Decisions this member's proposer made: ``graven_decisions_total`` summed over paths
    except ``read``; None when the metric is absent."""
    total: float | None = None
    for line in text.splitlines():
        if not line.startswith(DECISIONS_METRIC):
            continue
        rest = line[len(DECISIONS_METRIC) :]
        if not rest or rest[0] not in "{ ":
            continue  # another metric sharing the prefix
        if 'path="read"' in rest:
            continue  # a read that learned a decision is not another decision
        try:
            value = float(rest.rsplit("}", 1)[-1].split()[0])
        except (IndexError, ValueError):
            continue
        total = (total or 0.0) + value
    return None if total is None else int(total)
