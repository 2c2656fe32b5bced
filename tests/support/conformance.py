"""One job's events over every channel that delivers them must be identical: the conformance check.

A *leg* reads a finished job's events from one channel and returns them as ``Delivered`` (the
event as on Kafka, its type, and the id the channel gives it, if any). ``LEGS`` names them; a new
channel (webhook deliveries, say) is one more function ``(Target) -> list[Delivered]`` added to
``LEGS`` or passed in ``legs=``. ``assert_channels_agree`` reads every leg and compares them.

Timestamps are compared to the millisecond: ClickHouse keeps ``DateTime64(3)``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import orjson

from store.clickhouse import ClickHouseStore
from streams import wire
from tests.support.sse import Reader
from tests.support.waiting import wait_until
from tests.support.websocket import SocketReader

TERMINAL = frozenset({"succeeded", "failed", "cancelled"})


@dataclass(frozen=True)
class Target:
    """Where to read one job's events from, and as whom."""

    base_url: str
    store: ClickHouseStore
    tenant: str
    job_id: str
    headers: dict[str, str] = field(default_factory=dict)
    timeout_s: float = 90.0


@dataclass(frozen=True)
class Delivered:
    """One event as a channel delivered it."""

    id: str | None  #: the channel's id for it (SSE/WebSocket: the seq); None where a channel has none
    type: str
    event: dict[str, Any]  #: the event as on Kafka (``ts`` to the millisecond)


def normalised(event: dict[str, Any]) -> dict[str, Any]:
    ts = datetime.fromisoformat(str(event["ts"]).replace("Z", "+00:00"))
    return event | {"ts": ts.replace(microsecond=ts.microsecond // 1000 * 1000).isoformat()}


def sse_leg(target: Target) -> list[Delivered]:
    reader = Reader(target.base_url, f"/v1/jobs/{target.job_id}/events", headers=target.headers).start()
    reader.wait_done(target.timeout_s)
    assert reader.error is None and reader.status == 200, (reader.status, reader.error)
    return [Delivered(e.id, e.event, normalised(orjson.loads(e.data))) for e in reader.events]


def websocket_leg(target: Target) -> list[Delivered]:
    socket = SocketReader(target.base_url, f"/v1/jobs/{target.job_id}/ws", headers=target.headers).start()
    socket.wait_done(target.timeout_s)
    assert socket.close_code == 1000, (socket.close_code, socket.close_reason)
    return [Delivered(m["id"], m["event"], normalised(m["data"])) for m in socket.messages]


def clickhouse_leg(target: Target) -> list[Delivered]:
    """What analysts read: ``job_events`` (one event per seq), once the sink wrote the terminal one."""

    def stored() -> list[Any]:
        events = target.store.job_events(target.tenant, target.job_id)
        return events if events and events[-1].type.value in TERMINAL else []

    events = wait_until(stored, target.timeout_s, 0.2, message=f"job {target.job_id}'s end in ClickHouse")
    assert isinstance(events, list)
    return [Delivered(str(e.seq), e.type.value, normalised(orjson.loads(wire.dumps(e)))) for e in events]


Leg = Callable[[Target], list[Delivered]]
LEGS: dict[str, Leg] = {"sse": sse_leg, "websocket": websocket_leg, "clickhouse": clickhouse_leg}


def collect(target: Target, legs: Mapping[str, Leg] = LEGS) -> dict[str, list[Delivered]]:
    return {name: leg(target) for name, leg in legs.items()}


def assert_channels_agree(
    base_url: str,
    store: ClickHouseStore,
    tenant: str,
    job_id: str,
    headers: dict[str, str] | None = None,
    legs: Mapping[str, Leg] = LEGS,
) -> dict[str, list[Delivered]]:
    """Read the finished job over every leg; each must hold the same events, in the same order, ending
    with the terminal one; ids must agree where a channel has them. Returns what each leg read."""
    got = collect(Target(base_url, store, tenant, job_id, headers or {}), legs)
    reference_name, reference = next(iter(got.items()))
    assert reference and reference[-1].type in TERMINAL, (reference_name, reference)
    for name, delivered in got.items():
        assert [(d.type, d.event) for d in delivered] == [(r.type, r.event) for r in reference], (
            f"{name} differs from {reference_name}",
            [(d.id, d.type) for d in delivered],
            [(r.id, r.type) for r in reference],
        )
        ids = [(d.id, r.id) for d, r in zip(delivered, reference, strict=True)]
        assert all(a == b for a, b in ids if a is not None and b is not None), (name, ids)
    return got
