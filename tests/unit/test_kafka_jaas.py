"""docker-compose's broker user list (ambidex/kafka_jaas.py): one PLAIN user per
``AMBIDEX_KAFKA_PASSWORD_<USER>`` variable, named as the services log in (the inverse
of ``password_variable``), written as a JAAS file the broker can parse; a password the
file cannot hold is refused, not written broken."""

from __future__ import annotations

from pathlib import Path

import pytest

from ambidex.access import load_access
from ambidex.kafka_jaas import JAAS_FILE, BadPassword, passwords_from, render, user_of, write
from ambidex.stack.kafka_access import password_variable, principals


def test_each_principal_round_trips_through_its_variable() -> None:
    for access in principals(load_access()):
        assert user_of(password_variable(access.user)) == access.user


def test_the_file_lists_every_user_and_only_them(tmp_path: Path) -> None:
    passwords = passwords_from({
        "AMBIDEX_KAFKA_PASSWORD_AMBIDEX_ORDER_SYNC": "pw1+/=",
        "AMBIDEX_KAFKA_PASSWORD_AMBIDEX_ADMIN": "pw2",
        "AMBIDEX_APP_PASSWORD": "not a kafka user",
    })
    assert passwords == {"ambidex-admin": "pw2", "ambidex-order-sync": "pw1+/="}
    path = write(tmp_path, passwords)
    assert path.name == JAAS_FILE and path.stat().st_mode & 0o777 == 0o644
    assert path.read_text() == render(passwords) == (
        "KafkaServer {\n"
        "  org.apache.kafka.common.security.plain.PlainLoginModule required\n"
        '  user_ambidex-admin="pw2"\n'
        '  user_ambidex-order-sync="pw1+/=";\n'
        "};\n"
    )


@pytest.mark.parametrize("password", ["", 'a"b', "a\\b", "a\nb"])
def test_a_password_the_file_cannot_hold_is_refused(password: str) -> None:
    with pytest.raises(BadPassword, match="ambidex-admin") as raised:
        passwords_from({"AMBIDEX_KAFKA_PASSWORD_AMBIDEX_ADMIN": password})
    assert not password or password not in str(raised.value)
