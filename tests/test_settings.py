"""Settings: read from the environment once, validated, and every one documented."""

from pathlib import Path

import pytest
from pydantic import ValidationError

from streams.settings import Settings

README = (Path(__file__).resolve().parent.parent / "README.md").read_text()


def test_env_names_and_unprefixed_aliases(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("KAFKA_BOOTSTRAP", "broker:9092")
    monkeypatch.setenv("CLICKHOUSE_URL", "http://ch:8123")
    monkeypatch.setenv("JOBSTREAM_BATCH_MAX_SIZE", "1")
    settings = Settings()
    assert (settings.kafka_bootstrap, settings.clickhouse_url, settings.batch_max_size) == (
        "broker:9092",
        "http://ch:8123",
        1,
    )


def test_a_bad_value_fails_loudly_naming_the_setting(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("JOBSTREAM_BATCH_MAX_SIZE", "0")
    with pytest.raises(ValidationError, match="batch_max_size"):
        Settings()


def test_a_worker_started_with_the_env_reads_the_same_settings(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    from jobstream.workers import worker_env
    from streams.kafka_config import KafkaConnection

    settings = Settings(
        kafka_bootstrap="a:1",
        clickhouse_url="http://ch:8123",
        data_dir=tmp_path,
        topic_prefix="t.",
        calc_processes=3,
        timeout_grace_s=0.25,
        plugins="tests.calc_plugin",
        public_url=None,
        api_keys="t=secret",
    )
    env = worker_env(
        settings,
        KafkaConnection.from_settings(settings, "b:2"),
        base={"PATH": "/bin", "JOBSTREAM_API_KEYS": "t=secret"},
    )
    assert env["PATH"] == "/bin" and "JOBSTREAM_PUBLIC_URL" not in env
    for name in Settings.env_names():
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert Settings() == settings.model_copy(update={"kafka_bootstrap": "b:2"})


def test_topic_prefix_applies_to_every_topic():
    assert Settings(topic_prefix="x.").topic("jobs.events") == "x.jobs.events"


@pytest.mark.parametrize(
    # a setting with an unprefixed name (KAFKA_BOOTSTRAP) is documented under that name only
    "name",
    sorted(Settings.env_names() - {f"JOBSTREAM_{n}" for n in Settings.env_names() if not n.startswith("JOBSTREAM_")}),
)
def test_every_setting_is_in_the_readme_table(name: str):
    assert f"| `{name}` |" in README


def test_the_bulk_readers_fetch_settings_are_librdkafkas(monkeypatch: pytest.MonkeyPatch):
    assert Settings().bulk_reader_fetch() == {"fetch.wait.max.ms": 50, "fetch.min.bytes": 65536}
    monkeypatch.setenv("JOBSTREAM_BULK_READER_FETCH_MIN_BYTES", "1")
    monkeypatch.setenv("JOBSTREAM_BULK_READER_FETCH_WAIT_MS", "500")
    assert Settings().bulk_reader_fetch() == {"fetch.wait.max.ms": 500, "fetch.min.bytes": 1}
    monkeypatch.setenv("JOBSTREAM_BULK_READER_FETCH_MIN_BYTES", "0")
    with pytest.raises(ValidationError, match="bulk_reader_fetch_min_bytes"):
        Settings()
