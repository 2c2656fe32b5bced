"""The Kafka connection: where the cluster is and the options every client we create gets.

Components take a ``KafkaConnection`` instead of a bare bootstrap address, so what applies to
every client (address, logging, transport security, the role's login) is set here, in one
place: librdkafka's options for confluent-kafka producers, consumers and admin clients, and
the matching Faust credentials for the workers' aiokafka clients.
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import SecretStr

from streams.errors import JobstreamError
from streams.settings import Settings

if TYPE_CHECKING:
    import faust

# librdkafka's own log lines go through Python logging instead of raw stderr.
RDKAFKA_LOGGER = logging.getLogger("rdkafka")

ROLE_CREDENTIALS_ENV = "JOBSTREAM_KAFKA_ROLE_CREDENTIALS"

#: The principals jobstream's clients connect as; each may get its own login and ACLs (streams.acls).
ROLES = ("admin", "api", "worker", "gateway", "sink", "replay", "notifier")


class KafkaConfigError(JobstreamError, ValueError):
    """The Kafka security settings do not make a usable client (the message names the setting)."""


@dataclass(frozen=True, slots=True)
class SaslLogin:
    """A SASL username and password; the password is a ``SecretStr`` so reprs and logs never show it."""

    username: str
    password: SecretStr

    def __repr__(self) -> str:
        return f"SaslLogin(username={self.username!r}, password='**********')"


@dataclass(frozen=True, slots=True)
class KafkaSecurity:
    """Transport security of a Kafka client, in one shape both client stacks are built from."""

    protocol: str = "PLAINTEXT"  #: PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL
    mechanism: str = "SCRAM-SHA-512"  #: PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512 (SASL_* only)
    login: SaslLogin | None = None
    ca_location: Path | None = None  #: PEM CA bundle (unset: the system's)
    certificate_location: Path | None = None  #: client certificate (mTLS)
    key_location: Path | None = None  #: client key (mTLS)
    key_password: SecretStr | None = None
    check_hostname: bool = True

    @property
    def sasl(self) -> bool:
        return self.protocol.startswith("SASL_")

    @property
    def tls(self) -> bool:
        return self.protocol in ("SSL", "SASL_SSL")

    def _login(self, role: str | None) -> SaslLogin:
        if self.login is None:
            whose = f" for role {role!r}" if role else ""
            raise KafkaConfigError(
                f"KAFKA_SECURITY_PROTOCOL={self.protocol} needs a SASL login{whose}: "
                "set KAFKA_SASL_USERNAME and KAFKA_SASL_PASSWORD (or JOBSTREAM_KAFKA_ROLE_CREDENTIALS)"
            )
        return self.login

    def librdkafka(self, role: str | None = None) -> dict[str, Any]:
        """The librdkafka options (confluent-kafka producers, consumers, admin clients)."""
        if self.protocol == "PLAINTEXT":
            return {}
        config: dict[str, Any] = {"security.protocol": self.protocol}
        if self.sasl:
            login = self._login(role)
            config |= {
                "sasl.mechanism": self.mechanism,
                "sasl.username": login.username,
                "sasl.password": login.password.get_secret_value(),
            }
        if self.tls:
            config["ssl.endpoint.identification.algorithm"] = "https" if self.check_hostname else "none"
            if self.ca_location is not None:
                config["ssl.ca.location"] = str(self.ca_location)
            if self.certificate_location is not None:
                config["ssl.certificate.location"] = str(self.certificate_location)
            if self.key_location is not None:
                config["ssl.key.location"] = str(self.key_location)
            if self.key_password is not None:
                config["ssl.key.password"] = self.key_password.get_secret_value()
        return config

    def ssl_context(self) -> ssl.SSLContext | None:
        """The aiokafka TLS context, from the same files as librdkafka's (None without TLS)."""
        if not self.tls:
            return None
        from aiokafka.helpers import create_ssl_context

        context = create_ssl_context(
            cafile=self.ca_location,
            certfile=self.certificate_location,
            keyfile=self.key_location,
            password=self.key_password.get_secret_value() if self.key_password else None,
        )
        context.check_hostname = self.check_hostname
        return context

    def faust_credentials(self, role: str | None = None) -> faust.types.auth.CredentialsT | None:
        """Faust's ``broker_credentials`` (it hands them to aiokafka); None for PLAINTEXT."""
        import faust

        if self.protocol == "PLAINTEXT":
            return None
        context = self.ssl_context()
        if not self.sasl and context is not None:  # protocol SSL
            return faust.SSLCredentials(context)
        login = self._login(role)
        return faust.SASLCredentials(
            username=login.username,
            password=login.password.get_secret_value(),
            ssl_context=context,
            mechanism=self.mechanism,
        )

    def env(self) -> dict[str, str]:
        """These settings as the environment of a child process (``jobstream worker``), password included."""
        env = {"KAFKA_SECURITY_PROTOCOL": self.protocol, "KAFKA_SASL_MECHANISM": self.mechanism}
        env["KAFKA_SSL_CHECK_HOSTNAME"] = str(self.check_hostname).lower()
        if self.login is not None:
            env["KAFKA_SASL_USERNAME"] = self.login.username
            env["KAFKA_SASL_PASSWORD"] = self.login.password.get_secret_value()
        for name, value in (
            ("KAFKA_SSL_CA_LOCATION", self.ca_location),
            ("KAFKA_SSL_CERTIFICATE_LOCATION", self.certificate_location),
            ("KAFKA_SSL_KEY_LOCATION", self.key_location),
        ):
            if value is not None:
                env[name] = str(value)
        if self.key_password is not None:
            env["KAFKA_SSL_KEY_PASSWORD"] = self.key_password.get_secret_value()
        return env

    @classmethod
    def from_settings(cls, settings: Settings) -> KafkaSecurity:
        login = None
        if settings.kafka_sasl_username is not None or settings.kafka_sasl_password is not None:
            if settings.kafka_sasl_username is None or settings.kafka_sasl_password is None:
                raise KafkaConfigError("set both KAFKA_SASL_USERNAME and KAFKA_SASL_PASSWORD, or neither")
            login = SaslLogin(settings.kafka_sasl_username, settings.kafka_sasl_password)
        if (settings.kafka_ssl_certificate_location is None) != (settings.kafka_ssl_key_location is None):
            raise KafkaConfigError("set both KAFKA_SSL_CERTIFICATE_LOCATION and KAFKA_SSL_KEY_LOCATION, or neither")
        for name in ("kafka_ssl_ca_location", "kafka_ssl_certificate_location", "kafka_ssl_key_location"):
            path = getattr(settings, name)
            if path is not None and not Path(path).is_file():
                raise KafkaConfigError(f"{name.upper()}: no file at {path}")
        return cls(
            protocol=settings.kafka_security_protocol,
            mechanism=settings.kafka_sasl_mechanism,
            login=login,
            ca_location=settings.kafka_ssl_ca_location,
            certificate_location=settings.kafka_ssl_certificate_location,
            key_location=settings.kafka_ssl_key_location,
            key_password=settings.kafka_ssl_key_password,
            check_hostname=settings.kafka_ssl_check_hostname,
        )


def parse_role_logins(text: str) -> dict[str, SaslLogin]:
    """``role=user:password,...`` → logins; errors name the role, never the password."""
    logins: dict[str, SaslLogin] = {}
    for item in (i.strip() for i in text.split(",") if i.strip()):
        role, _, login = item.partition("=")
        role = role.strip()
        username, colon, password = login.partition(":")
        if role not in ROLES:
            raise KafkaConfigError(f"JOBSTREAM_KAFKA_ROLE_CREDENTIALS: unknown role {role!r}; choose from {ROLES}")
        if not username or not colon or not password:
            raise KafkaConfigError(f"JOBSTREAM_KAFKA_ROLE_CREDENTIALS: role {role!r} needs 'user:password'")
        logins[role] = SaslLogin(username.strip(), SecretStr(password))
    return logins


@dataclass(frozen=True, slots=True)
class KafkaConnection:
    """A Kafka cluster and the client options derived from ``Settings`` once."""

    bootstrap: str  #: ``host:port[,host:port...]``
    max_message_bytes: int  #: largest record we produce or fetch
    produce_timeout_s: float  #: how long a producer tries to deliver a record
    security: KafkaSecurity = field(default_factory=KafkaSecurity)
    #: per-role logins (``for_role``); a role not listed keeps ``security.login``
    role_logins: tuple[tuple[str, SaslLogin], ...] = ()
    role: str | None = None  #: the role this connection's clients act as (None: not chosen)
    linger_ms: float = 1.0  #: how long a producer waits for more records before it sends (JOBSTREAM_KAFKA_LINGER_MS)

    @classmethod
    def from_settings(cls, settings: Settings, bootstrap: str | None = None) -> KafkaConnection:
        """The connection to ``bootstrap`` (default: the settings' ``kafka_bootstrap``)."""
        address = bootstrap or settings.kafka_bootstrap
        if not address:
            raise ValueError("no Kafka bootstrap address (KAFKA_BOOTSTRAP is unset)")
        logins = (
            parse_role_logins(settings.kafka_role_credentials.get_secret_value())
            if (settings.kafka_role_credentials)
            else {}
        )
        return cls(
            address,
            settings.max_message_bytes,
            settings.produce_timeout_s,
            KafkaSecurity.from_settings(settings),
            tuple(sorted(logins.items())),
            linger_ms=settings.kafka_linger_ms,
        )

    def for_role(self, role: str) -> KafkaConnection:
        """This connection as ``role``'s principal: its own login when one is known for it."""
        if role not in ROLES:
            raise ValueError(f"unknown Kafka role {role!r}; choose from {ROLES}")
        login = dict(self.role_logins).get(role)
        security = self.security if login is None else replace(self.security, login=login)
        return replace(self, security=security, role=role)

    @property
    def principal(self) -> str | None:
        """The SASL user clients of this connection log in as (None without SASL)."""
        login = self.security.login
        return login.username if self.security.sasl and login is not None else None

    def client_config(self) -> dict[str, Any]:
        """What every client gets: the address, logging and transport security."""
        return {
            "bootstrap.servers": self.bootstrap,
            "logger": RDKAFKA_LOGGER,
            **self.security.librdkafka(self.role),
        }

    def admin_config(self) -> dict[str, Any]:
        return self.client_config()

    def producer_config(self, **extra: Any) -> dict[str, Any]:
        """An idempotent, acks=all producer: an acknowledged event is on every in-sync replica."""
        return {
            **self.client_config(),
            "enable.idempotence": True,
            "acks": "all",
            "linger.ms": self.linger_ms,  # 1 ms: concurrent sends share a request (a third of the broker's CPU)
            "compression.type": "lz4",
            "message.max.bytes": self.max_message_bytes,
            "message.timeout.ms": int(self.produce_timeout_s * 1000),
            **extra,
        }

    def consumer_config(self, group_id: str, **extra: Any) -> dict[str, Any]:
        """A consumer that commits only when told to (offsets move after the work is done)."""
        return {
            **self.client_config(),
            "group.id": group_id,
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            "fetch.max.bytes": max(self.max_message_bytes, 52428800),
            "max.partition.fetch.bytes": self.max_message_bytes,
            **extra,
        }

    def faust_credentials(self) -> faust.types.auth.CredentialsT | None:
        """Faust's ``broker_credentials`` for this connection's login (None for PLAINTEXT)."""
        return self.security.faust_credentials(self.role)

    def env(self, roles: Iterable[str] = ()) -> dict[str, str]:
        """The environment a child process needs to build this same connection (secrets included), with the
        logins of ``roles`` (``JOBSTREAM_KAFKA_ROLE_CREDENTIALS``) for a process that acts as several."""
        env = {"KAFKA_BOOTSTRAP": self.bootstrap, **self.security.env()}
        logins = dict(self.role_logins)
        chosen = [f"{r}={logins[r].username}:{logins[r].password.get_secret_value()}" for r in roles if r in logins]
        if chosen:
            env[ROLE_CREDENTIALS_ENV] = ",".join(chosen)
        return env
