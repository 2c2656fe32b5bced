"""Pure logic of the gateway: stream tokens, positions, filters, the subscriber queue."""

from __future__ import annotations

import asyncio
import logging
import stat
from concurrent.futures import ThreadPoolExecutor

import pytest

from sse_gateway import positions
from sse_gateway.entry import Entry
from sse_gateway.limits import ConnectionLimits, TooManyStreams
from sse_gateway.subscriptions import Subscription
from sse_gateway.tenant_stream import EventFilter
from sse_gateway.tokens import SECRET_FILE, InvalidToken, SecretFileError, StreamTokens, load_or_create_secret
from streams.events import JobStatus
from streams.settings import Settings


class Clock:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_a_token_carries_tenant_job_and_expiry_and_expires():
    clock = Clock()
    tokens = StreamTokens(b"s" * 32, max_ttl_s=300, clock=clock)
    token, expires_at = tokens.issue("acme", "job-1")
    grant = tokens.verify(token)
    assert (grant.tenant, grant.job_id, grant.expires_at) == (
        "acme",
        "job-1",
        expires_at,
    ) and expires_at == clock.now + 300
    clock.now += 299
    assert tokens.verify(token).tenant == "acme"
    clock.now += 1
    with pytest.raises(InvalidToken, match="expired"):
        tokens.verify(token)


def test_a_token_may_ask_for_less_time_but_not_more():
    clock = Clock()
    tokens = StreamTokens(b"s" * 32, max_ttl_s=300, clock=clock)
    assert tokens.issue("acme", ttl_s=10)[1] == clock.now + 10
    assert tokens.issue("acme", ttl_s=10_000)[1] == clock.now + 300
    assert tokens.verify(tokens.issue("acme")[0]).job_id is None


@pytest.mark.parametrize(
    "mangle",
    [
        # signature changed: its first character (all 6 bits are signature; the last one's low bits
        # are base64 padding, so changing only those decodes to the same bytes)
        lambda t: t[: t.index(".") + 1] + ("A" if t[t.index(".") + 1] != "A" else "B") + t[t.index(".") + 2 :],
        lambda t: "eyJ2IjoxLCJ0IjoiZXZpbCIsImoiOm51bGwsImUiOjk5OTk5OTk5OTl9" + t[t.index(".") :],  # payload swapped
        lambda t: t.replace(".", ""),
        lambda t: t + ".x",
        lambda t: "",
        lambda t: "%%%.%%%",
    ],
)
def test_a_forged_or_malformed_token_is_refused(mangle):
    tokens = StreamTokens(b"s" * 32, max_ttl_s=300)
    token, _ = tokens.issue("acme", "job-1")
    with pytest.raises(InvalidToken):
        tokens.verify(mangle(token))


def test_a_token_of_another_secret_is_refused():
    token, _ = StreamTokens(b"a" * 32, max_ttl_s=300).issue("acme")
    with pytest.raises(InvalidToken, match="signature"):
        StreamTokens(b"b" * 32, max_ttl_s=300).verify(token)


def test_positions_round_trip_and_reject_what_is_not_one():
    assert positions.encode([12, 0, 7]) == "0:12,1:0,2:7"
    assert positions.parse("0:12,1:0,2:7", 3) == [12, 0, 7]
    assert positions.parse("2:7, 0:12,1:0", 3) == [12, 0, 7]
    for bad in ("", "12", "0:1,1:x", "0:1,0:2,1:3", "0:1", "0:-1,1:2", "a:1,b:2"):
        with pytest.raises(positions.BadPosition):
            positions.parse(bad, 2)
    assert positions.at_least([1, 5], [3, 2]) == [3, 5]


def _entry(job_id: str = "j", type_: str = "progress", kind: str = "k", seq: int = 1) -> Entry:
    return Entry(0, 0, 0, job_id, "t", seq, type_, kind, b"{}")


def test_filters_by_kind_status_and_job():
    everything = EventFilter()
    assert everything(_entry())
    running = EventFilter(statuses=[JobStatus.RUNNING])
    assert running(_entry(type_="progress")) and running(_entry(type_="retrying")) and running(_entry(type_="running"))
    assert not running(_entry(type_="queued")) and not running(_entry(type_="succeeded"))
    both = EventFilter(kinds=["a"], job_ids=["j1", "j2"])
    assert both(_entry("j1", kind="a")) and not both(_entry("j3", kind="a")) and not both(_entry("j1", kind="b"))


def test_frames_are_built_once_and_shared():
    entry = _entry(seq=42)
    assert entry.job_frame() == b"id: 42\nevent: progress\ndata: {}\n\n"
    assert entry.job_frame() is entry.job_frame()
    entry.position = (3, 4)
    assert entry.tenant_frame() == b"id: 0:3,1:4\nevent: progress\ndata: {}\n\n"
    assert entry.tenant_frame([5, 4]) == b"id: 0:5,1:4\nevent: progress\ndata: {}\n\n"


def test_a_full_queue_closes_the_subscription_as_slow_and_frees_it():
    async def scenario() -> None:
        sub = Subscription("j", maxsize=2)
        assert sub.push(_entry(seq=1)) and sub.push(_entry(seq=2))
        assert not sub.push(_entry(seq=3))  # overflow: the client is cut, its backlog dropped
        assert sub.closed and sub.reason == "slow_client" and not sub.items
        assert await sub.wait() == []
        fine = Subscription("j", maxsize=2)
        waiter = asyncio.ensure_future(fine.wait())
        await asyncio.sleep(0)
        fine.push(_entry(seq=7))
        assert [e.seq for e in await waiter] == [7]
        # the fanout's ticker: a heartbeat after idling that long, then the end at the deadline
        waiter = asyncio.ensure_future(fine.wait())
        await asyncio.sleep(0)
        fine.tick(fine.waiting_since + 1, heartbeat_s=5)
        assert not waiter.done()
        fine.tick(fine.waiting_since + 5, heartbeat_s=5)
        assert await waiter == [] and fine.heartbeat_due() and not fine.heartbeat_due()
        fine.deadline = fine.waiting_since + 60
        fine.tick(fine.deadline, heartbeat_s=5)
        assert fine.closed and fine.reason == "max_lifetime"

    asyncio.run(scenario())


def test_connection_limits_per_process_and_per_tenant():
    limits = ConnectionLimits(max_total=3, max_per_tenant=2)
    a1, a2 = limits.acquire("a"), limits.acquire("a")
    with pytest.raises(TooManyStreams) as refused:
        limits.acquire("a")
    assert refused.value.scope == "tenant"
    b1 = limits.acquire("b")
    with pytest.raises(TooManyStreams) as refused:
        limits.acquire("c")
    assert refused.value.scope == "process"
    a1.release()
    a1.release()  # idempotent
    assert limits.total == 2 and limits.per_tenant == {"a": 1, "b": 1}
    limits.acquire("c")
    a2.release()
    b1.release()


# --- the key kept in the data dir ---------------------------------------------------------------
def test_without_a_secret_the_key_is_kept_in_the_data_dir_and_survives_a_restart(tmp_path, caplog):
    settings = Settings(data_dir=tmp_path / "data")
    with caplog.at_level(logging.DEBUG):
        token, _ = StreamTokens.from_settings(settings).issue("acme", "job-1")
        restarted = StreamTokens.from_settings(settings)  # a new process: same data dir, same key
    assert restarted.verify(token).tenant == "acme"
    path = tmp_path / "data" / SECRET_FILE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    key = path.read_text().strip()
    assert len(bytes.fromhex(key)) == 32
    assert key not in caplog.text and str(path) in caplog.text  # where it is, never what it is
    assert [p.name for p in path.parent.iterdir()] == [SECRET_FILE]  # no temp file left behind
    with pytest.raises(InvalidToken, match="signature"):  # another data dir: another key
        StreamTokens.from_settings(Settings(data_dir=tmp_path / "other")).verify(token)


def test_concurrent_first_starts_agree_on_one_key(tmp_path):
    path = tmp_path / "k" / SECRET_FILE
    with ThreadPoolExecutor(8) as pool:
        keys = set(pool.map(lambda _: load_or_create_secret(path), range(32)))
    assert len(keys) == 1


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o606, 0o620])
def test_a_key_file_open_to_others_is_refused_without_showing_it(tmp_path, mode):
    path = tmp_path / SECRET_FILE
    load_or_create_secret(path)
    key = path.read_text().strip()
    path.chmod(mode)
    with pytest.raises(SecretFileError, match=f"{mode:04o}") as refused:
        StreamTokens.from_settings(Settings(data_dir=tmp_path))
    assert key not in str(refused.value)


@pytest.mark.parametrize("content", [b"", b"not hex at all\n", b"abcd\n"])
def test_a_key_file_without_a_usable_key_is_refused(tmp_path, content):
    path = tmp_path / "custom.secret"
    path.write_bytes(content)
    path.chmod(0o600)
    with pytest.raises(SecretFileError, match="hex key"):
        StreamTokens.from_settings(Settings(data_dir=tmp_path, stream_token_secret_file=path))


def test_a_symlinked_key_file_is_refused(tmp_path):
    real = tmp_path / "real.secret"
    load_or_create_secret(real)
    (tmp_path / SECRET_FILE).symlink_to(real)
    with pytest.raises(SecretFileError, match="cannot open"):
        load_or_create_secret(tmp_path / SECRET_FILE)


def test_a_configured_secret_writes_no_file(tmp_path):
    tokens = StreamTokens.from_settings(Settings(data_dir=tmp_path, stream_token_secret="x" * 32))
    assert tokens.verify(tokens.issue("acme")[0]).tenant == "acme"
    assert not (tmp_path / SECRET_FILE).exists()
