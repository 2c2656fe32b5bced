"""Transport security settings → the options of both Kafka client stacks, and secrets kept out of sight.

Unit tests: no broker here (tests/test_secured_kafka.py runs both stacks against a secured one).
"""

from __future__ import annotations

import logging
import ssl
from pathlib import Path

import faust
import pytest
from pydantic import SecretStr, ValidationError

from streams.acls import acl_commands, role_grants
from streams.certs import LocalCA
from streams.kafka_config import KafkaConfigError, KafkaConnection, KafkaSecurity
from streams.settings import Settings

PASSWORD = "s3cret-Pässword"  # noqa: S105 - a test value


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> LocalCA:
    return LocalCA(tmp_path_factory.mktemp("ca"))


def sasl_ssl(ca: LocalCA, **overrides: object) -> Settings:
    values: dict[str, object] = {
        "kafka_bootstrap": "broker:9093",
        "kafka_security_protocol": "SASL_SSL",
        "kafka_sasl_mechanism": "SCRAM-SHA-256",
        "kafka_sasl_username": "jobs",
        "kafka_sasl_password": PASSWORD,
        "kafka_ssl_ca_location": ca.cert_path,
        **overrides,
    }
    return Settings(**values)  # type: ignore[arg-type]


def test_plaintext_adds_nothing_to_either_client_stack():
    connection = KafkaConnection.from_settings(Settings(kafka_bootstrap="b:9092"))
    assert connection.client_config().keys() == {"bootstrap.servers", "logger"}
    assert connection.faust_credentials() is None


def test_sasl_ssl_maps_to_librdkafka_and_to_faust_aiokafka(ca: LocalCA):
    connection = KafkaConnection.from_settings(sasl_ssl(ca))
    config = connection.producer_config()
    assert {k: config[k] for k in config if k.startswith(("security", "sasl", "ssl"))} == {
        "security.protocol": "SASL_SSL",
        "sasl.mechanism": "SCRAM-SHA-256",
        "sasl.username": "jobs",
        "sasl.password": PASSWORD,
        "ssl.ca.location": str(ca.cert_path),
        "ssl.endpoint.identification.algorithm": "https",
    }
    assert connection.consumer_config("g")["sasl.username"] == "jobs"  # every client kind gets it
    assert connection.admin_config()["security.protocol"] == "SASL_SSL"

    credentials = connection.faust_credentials()
    assert isinstance(credentials, faust.SASLCredentials)
    assert (credentials.username, credentials.password, credentials.mechanism.value) == (
        "jobs",
        PASSWORD,
        "SCRAM-SHA-256",
    )
    assert credentials.protocol.value == "SASL_SSL"  # an ssl_context makes Faust use SASL_SSL
    context = credentials.ssl_context
    assert isinstance(context, ssl.SSLContext) and context.check_hostname
    assert context.verify_mode == ssl.CERT_REQUIRED
    assert any("jobstream local CA" in str(c.get("subject")) for c in context.get_ca_certs())


def test_sasl_plaintext_has_no_tls_and_ssl_with_a_client_certificate_is_mtls(ca: LocalCA):
    plain = KafkaConnection.from_settings(sasl_ssl(ca, kafka_security_protocol="SASL_PLAINTEXT"))
    assert not any(k.startswith("ssl.") for k in plain.client_config())
    credentials = plain.faust_credentials()
    assert isinstance(credentials, faust.SASLCredentials) and credentials.ssl_context is None

    client = ca.issue("jobstream-client", ["localhost"], client=True)
    mtls = KafkaConnection.from_settings(
        Settings(
            kafka_bootstrap="b:9093",
            kafka_security_protocol="SSL",
            kafka_ssl_ca_location=ca.cert_path,
            kafka_ssl_certificate_location=client.cert,
            kafka_ssl_key_location=client.key,
            kafka_ssl_check_hostname=False,
        )
    )
    config = mtls.client_config()
    assert config["ssl.certificate.location"] == str(client.cert) and config["ssl.key.location"] == str(client.key)
    assert config["ssl.endpoint.identification.algorithm"] == "none" and "sasl.username" not in config
    ssl_credentials = mtls.faust_credentials()
    assert isinstance(ssl_credentials, faust.SSLCredentials) and not ssl_credentials.context.check_hostname


def test_env_names_follow_kafka_bootstrap(monkeypatch: pytest.MonkeyPatch, ca: LocalCA):
    monkeypatch.setenv("KAFKA_SECURITY_PROTOCOL", "SASL_SSL")
    monkeypatch.setenv("KAFKA_SASL_USERNAME", "u")
    monkeypatch.setenv("KAFKA_SASL_PASSWORD", PASSWORD)
    monkeypatch.setenv("JOBSTREAM_KAFKA_SSL_CA_LOCATION", str(ca.cert_path))
    settings = Settings()
    assert settings.kafka_security_protocol == "SASL_SSL" and settings.kafka_ssl_ca_location == ca.cert_path
    assert settings.kafka_sasl_password is not None and settings.kafka_sasl_password.get_secret_value() == PASSWORD
    monkeypatch.setenv("KAFKA_SECURITY_PROTOCOL", "SASL_TLS")
    with pytest.raises(ValidationError, match="KAFKA_SECURITY_PROTOCOL"):
        Settings()


def test_the_password_is_in_no_repr_error_or_log(ca: LocalCA, caplog: pytest.LogCaptureFixture):
    caplog.set_level(logging.DEBUG)
    settings = sasl_ssl(ca, kafka_role_credentials=f"sink=sinker:{PASSWORD}")
    connection = KafkaConnection.from_settings(settings)
    shown = [
        repr(settings),
        str(settings),
        repr(connection),
        repr(connection.for_role("sink")),
        repr(connection.security),
    ]
    assert all(PASSWORD not in text for text in shown)
    assert all("**" in text for text in shown)
    for bad in (f"sink=sinker{PASSWORD}", f"nobody=x:{PASSWORD}"):  # no colon; an unknown role
        with pytest.raises(KafkaConfigError) as error:
            KafkaConnection.from_settings(settings.model_copy(update={"kafka_role_credentials": SecretStr(bad)}))
        assert PASSWORD not in str(error.value)
    with pytest.raises(KafkaConfigError, match="KAFKA_SASL_USERNAME and KAFKA_SASL_PASSWORD"):
        KafkaConnection.from_settings(sasl_ssl(ca, kafka_sasl_username=None))
    assert PASSWORD not in caplog.text


def test_each_role_logs_in_as_itself_and_without_a_login_sasl_refuses_to_build(ca: LocalCA):
    settings = sasl_ssl(ca, kafka_role_credentials=f"sink=sinker:{PASSWORD}x, api=apier:{PASSWORD}y")
    connection = KafkaConnection.from_settings(settings)
    assert connection.for_role("sink").client_config()["sasl.username"] == "sinker"
    assert connection.for_role("sink").client_config()["sasl.password"] == PASSWORD + "x"
    assert connection.for_role("worker").client_config()["sasl.username"] == "jobs"  # not listed: the default
    assert connection.for_role("api").env()["KAFKA_SASL_USERNAME"] == "apier"  # what a child process gets
    with pytest.raises(ValueError, match="unknown Kafka role"):
        connection.for_role("root")
    no_login = KafkaConnection("b:1", 1024, 1.0, KafkaSecurity(protocol="SASL_SSL")).for_role("gateway")
    with pytest.raises(KafkaConfigError, match="for role 'gateway'"):
        no_login.producer_config()


def test_a_child_process_env_rebuilds_the_same_connection(ca: LocalCA, monkeypatch: pytest.MonkeyPatch):
    connection = KafkaConnection.from_settings(sasl_ssl(ca))
    for name in Settings.env_names():
        monkeypatch.delenv(name, raising=False)
    for name, value in connection.env().items():
        monkeypatch.setenv(name, value)
    assert KafkaConnection.from_settings(Settings()) == connection


def test_missing_files_are_named(tmp_path: Path, ca: LocalCA):
    with pytest.raises(KafkaConfigError, match="KAFKA_SSL_CA_LOCATION: no file"):
        KafkaConnection.from_settings(sasl_ssl(ca, kafka_ssl_ca_location=tmp_path / "nope.pem"))
    with pytest.raises(KafkaConfigError, match="KAFKA_SSL_CERTIFICATE_LOCATION and KAFKA_SSL_KEY_LOCATION"):
        KafkaConnection.from_settings(sasl_ssl(ca, kafka_ssl_key_location=ca.cert_path))


def test_every_role_has_least_privilege_acls_and_the_operator_gets_commands():
    grants = role_grants(Settings(topic_prefix="p."))
    writes = {role: {g.name for g in gs if g.operation == "WRITE"} for role, gs in grants.items()}
    reads = {
        role: {g.name for g in gs if g.resource == "topic" and g.operation == "READ"} for role, gs in grants.items()
    }
    assert writes["gateway"] == writes["sink"] == set()
    assert reads["gateway"] == {"p.jobs.events"}
    assert reads["sink"] == {"p.jobs.events", "p.webhooks.attempts", "p.jobs.reuses"}
    assert writes["worker"] == {"p.jobs.events", "p.jobs.dead-letters"}
    assert "p.jobs.requested" not in writes["worker"] and "p.jobs.control" not in writes["replay"]
    joins = {
        role: {g.name for g in gs if g.resource == "group" and g.operation == "READ"} for role, gs in grants.items()
    }
    assert joins == {
        "api": set(),
        "worker": {"p.jobstream-processors"},
        "gateway": set(),
        "sink": {"p.jobstream-sink", "p.jobstream-sink-webhooks", "p.jobstream-sink-reuses"},
        "replay": set(),
        "notifier": {"p.jobstream-notifier"},
    }
    assert writes["notifier"] == {"p.webhooks.retry", "p.webhooks.attempts", "p.webhooks.subscriptions"}
    text = acl_commands({role: f"u-{role}" for role in grants}, Settings(topic_prefix="p."))
    assert "--allow-principal 'User:u-sink' --operation Read --topic 'p.jobs.events'" in text
    assert "--operation IdempotentWrite --cluster" in text


def test_kafka_acls_command_prints_commands_for_the_prefix_and_named_users(monkeypatch: pytest.MonkeyPatch):
    from typer.testing import CliRunner

    from jobstream.cli import app

    monkeypatch.setenv("JOBSTREAM_TOPIC_PREFIX", "prod.")
    result = CliRunner().invoke(app, ["kafka-acls", "--user", "sink=svc-sink"])
    assert result.exit_code == 0, result.output
    assert "--allow-principal 'User:svc-sink' --operation Read --topic 'prod.jobs.events'" in result.output
    assert (
        "--allow-principal 'User:jobstream-worker' --operation Read --group 'prod.jobstream-processors'"
        in result.output
    )
    assert CliRunner().invoke(app, ["kafka-acls", "--user", "root=x"]).exit_code == 2


def test_every_producer_lingers_as_set_1_ms_by_default():
    assert KafkaConnection.from_settings(Settings(), "b:1").producer_config()["linger.ms"] == 1
    assert KafkaConnection.from_settings(Settings(kafka_linger_ms=0), "b:1").producer_config()["linger.ms"] == 0
    lingering = KafkaConnection.from_settings(Settings(kafka_linger_ms=2), "b:1")
    assert lingering.producer_config()["linger.ms"] == 2
    assert lingering.for_role("api").producer_config()["linger.ms"] == 2
