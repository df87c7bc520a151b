"""docker-compose's JMX exporter agent (ambidex/jmx_agent.py): only a jar with the pinned
SHA-256 is ever installed, a verified copy is not downloaded again, and the version is
the one the local stack's pom fetches (one agent for both)."""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

import pytest

from ambidex.jmx_agent import JAR, SHA256, URL, VERSION, AgentDigestMismatch, fetch_agent
from ambidex.stack.jars import JMX_AGENT_POM


def _serving(data: bytes, calls: list[str]):  # type: ignore[no-untyped-def]
    def opener(url: str) -> io.BytesIO:
        calls.append(url)
        return io.BytesIO(data)

    return opener


def test_a_jar_with_the_pinned_digest_is_installed_once(tmp_path: Path) -> None:
    data = b"the agent"
    digest = hashlib.sha256(data).hexdigest()
    calls: list[str] = []
    target = fetch_agent(tmp_path, sha256=digest, opener=_serving(data, calls))
    assert target == tmp_path / JAR and target.read_bytes() == data
    assert fetch_agent(tmp_path, sha256=digest, opener=_serving(b"other", calls)) == target
    assert calls == [URL]  # the verified copy was kept


def test_a_jar_with_another_digest_is_refused_and_not_installed(tmp_path: Path) -> None:
    (tmp_path / JAR).write_bytes(b"tampered")  # a wrong copy is replaced, not trusted
    with pytest.raises(AgentDigestMismatch, match="expected"):
        fetch_agent(tmp_path, opener=_serving(b"not the agent", []))
    assert (tmp_path / JAR).read_bytes() == b"tampered"
    assert not list(tmp_path.glob("*.part"))


def test_the_version_is_the_local_stacks_and_the_digest_is_pinned() -> None:
    assert f"<artifactId>jmx_prometheus_javaagent</artifactId><version>{VERSION}</version>" in (
        JMX_AGENT_POM.read_text()
    )
    assert URL.endswith(f"/io/prometheus/jmx/jmx_prometheus_javaagent/{VERSION}/{JAR}")
    assert len(SHA256) == 64 and int(SHA256, 16)
