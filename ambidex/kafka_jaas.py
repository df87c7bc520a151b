"""The broker's user list for docker-compose's Kafka (SASL/PLAIN), as a JAAS file.

The ``apache/kafka`` image turns ``KAFKA_*`` variables into ``server.properties`` but
drops every variable whose value holds an ``=`` (its utility splits each variable at
every ``=``), so a JAAS config with ``user_<name>="<password>"`` entries cannot come
through a variable. The compose file's one-shot ``kafka-users`` job runs
``python -m ambidex.kafka_jaas /state`` in the services' image: one user per
``AMBIDEX_KAFKA_PASSWORD_<USER>`` variable it is given (the user ``ambidex-order-sync``
from ``AMBIDEX_KAFKA_PASSWORD_AMBIDEX_ORDER_SYNC``, the inverse of
:func:`ambidex.stack.kafka_access.password_variable`), written to a volume the broker
reads with ``-Djava.security.auth.login.config``. Passwords are never printed.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from pathlib import Path

PREFIX = "AMBIDEX_KAFKA_PASSWORD_"
JAAS_FILE = "kafka_server_jaas.conf"
LOGIN_MODULE = "org.apache.kafka.common.security.plain.PlainLoginModule"


class BadPassword(ValueError):
    """A password a JAAS file cannot hold (empty, or a quote, backslash or newline)."""


def user_of(variable: str) -> str:
    """``AMBIDEX_KAFKA_PASSWORD_AMBIDEX_ORDER_SYNC`` -> ``ambidex-order-sync``."""
    return variable.removeprefix(PREFIX).lower().replace("_", "-")


def passwords_from(environ: Mapping[str, str]) -> dict[str, str]:
    """``{user: password}`` of every ``AMBIDEX_KAFKA_PASSWORD_*`` variable."""
    found = {user_of(k): v for k, v in environ.items() if k.startswith(PREFIX) and k != PREFIX}
    for user, password in found.items():
        if not password or any(c in password for c in '"\\\n\r'):
            raise BadPassword(
                f"the password of {user} is empty or holds a quote, backslash or newline"
            )
    return dict(sorted(found.items()))


def render(passwords: Mapping[str, str]) -> str:
    """A ``KafkaServer`` section the broker checks PLAIN logins against."""
    users = "\n".join(f'  user_{user}="{password}"' for user, password in passwords.items())
    return f"KafkaServer {{\n  {LOGIN_MODULE} required\n{users};\n}};\n"


def write(target_dir: Path, passwords: Mapping[str, str]) -> Path:
    target = target_dir / JAAS_FILE
    partial = target.with_suffix(".part")
    partial.write_text(render(passwords))
    partial.chmod(0o644)  # the broker runs as another user; only its container mounts it
    partial.replace(target)
    return target


def main() -> None:
    passwords = passwords_from(os.environ)
    if not passwords:
        raise SystemExit(f"no {PREFIX}* variable: no Kafka user to write")
    target = write(Path(sys.argv[1] if len(sys.argv) > 1 else "."), passwords)
    print(f"{target}: {len(passwords)} Kafka users ({', '.join(passwords)})")


if __name__ == "__main__":
    main()
