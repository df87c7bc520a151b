"""How every Ambidex Kafka client connects: plain, TLS, SASL (SCRAM/PLAIN) or both.

A deployment secures its brokers (Strimzi: a TLS listener with SCRAM-SHA-512 users, one
per service, see ``deploy/access.yaml``); the local stack and the tests use a plain
listener. Every consumer, producer and admin client a service or an operator command
makes takes its connection options from :func:`client_options`, so one setting
(``AMBIDEX_KAFKA_SECURITY_PROTOCOL`` and its companions, see ``docs/configuration.md``)
secures all of them. A plain bootstrap string stays accepted wherever a connection is
(tests, the local stack): it means PLAINTEXT.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from aiokafka.helpers import create_ssl_context

SecurityProtocol = Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"]
SaslMechanism = Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"]


@dataclass(frozen=True)
class KafkaConnection:
    """Where the brokers are and how to authenticate to them (the password never printed)."""

    bootstrap: str
    security_protocol: SecurityProtocol = "PLAINTEXT"
    sasl_mechanism: SaslMechanism | None = None
    sasl_username: str | None = None
    sasl_password: str | None = field(default=None, repr=False)
    #: CA bundle the brokers' certificates are checked against (None: the system's)
    ssl_cafile: Path | None = None

    def __post_init__(self) -> None:
        if self.security_protocol.startswith("SASL") and not (
            self.sasl_mechanism and self.sasl_username and self.sasl_password
        ):
            raise ValueError(
                f"security protocol {self.security_protocol} needs a SASL mechanism, "
                "user name and password"
            )


#: a connection, or a plain bootstrap string (PLAINTEXT: the local stack, tests)
Kafka = KafkaConnection | str


def bootstrap_of(kafka: Kafka) -> str:
    return kafka if isinstance(kafka, str) else kafka.bootstrap


def client_options(kafka: Kafka) -> dict[str, Any]:
    """The keyword arguments every aiokafka client takes to reach ``kafka``."""
    if isinstance(kafka, str):
        return {"bootstrap_servers": kafka}
    options: dict[str, Any] = {
        "bootstrap_servers": kafka.bootstrap,
        "security_protocol": kafka.security_protocol,
    }
    if kafka.security_protocol in ("SSL", "SASL_SSL"):
        cafile = str(kafka.ssl_cafile) if kafka.ssl_cafile is not None else None
        options["ssl_context"] = create_ssl_context(cafile=cafile)
    if kafka.security_protocol.startswith("SASL"):
        options.update(
            sasl_mechanism=kafka.sasl_mechanism,
            sasl_plain_username=kafka.sasl_username,
            sasl_plain_password=kafka.sasl_password,
        )
    return options
