"""The Prometheus JMX exporter agent for docker-compose's Kafka and Connect.

Neither official image (``apache/kafka``, ``quay.io/debezium/connect``) carries the agent.
The compose file's one-shot ``jmx-agent`` job runs ``python -m ambidex.jmx_agent /state``
in the services' image: it fetches the jar the local stack uses
(``io.prometheus.jmx:jmx_prometheus_javaagent``, the version of
``deploy/local/jmx/pom.xml``) from Maven Central into a shared volume, checks its
SHA-256, and the broker and the worker load it with ``-javaagent`` and the rule files of
``deploy/monitoring/jmx/``. A jar already there with the right digest is kept (no
download on a restart); a download with any other digest is refused, never installed.
"""

from __future__ import annotations

import hashlib
import sys
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

VERSION = "1.0.1"
JAR = f"jmx_prometheus_javaagent-{VERSION}.jar"
URL = (
    "https://repo1.maven.org/maven2/io/prometheus/jmx/jmx_prometheus_javaagent/"
    f"{VERSION}/{JAR}"
)
#: the jar Maven fetched from Central for the local stack (its SHA-1 equals Central's
#: published f9c53eb0aa1828c3c9cd7647238563e43a4ed68c)
SHA256 = "7d61f737fd661610ccc14aea79764faa1ea94a340cbc8f0029b3d2edea3d80c1"


class AgentDigestMismatch(RuntimeError):
    """The downloaded jar is not the one pinned here."""


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def fetch_agent(
    target_dir: Path,
    *,
    url: str = URL,
    sha256: str = SHA256,
    opener: Callable[[str], BinaryIO] = lambda u: urllib.request.urlopen(u, timeout=60),
) -> Path:
    """The agent's jar in ``target_dir``, downloaded unless a verified copy is there."""
    target = target_dir / JAR
    if target.exists() and _sha256(target.read_bytes()) == sha256:
        return target
    with opener(url) as response:
        data = response.read()
    if _sha256(data) != sha256:
        raise AgentDigestMismatch(f"{url}: SHA-256 {_sha256(data)}, expected {sha256}")
    partial = target.with_suffix(".part")
    partial.write_bytes(data)
    partial.replace(target)  # a reader never sees half a jar
    return target


def main() -> None:
    target = fetch_agent(Path(sys.argv[1] if len(sys.argv) > 1 else "."))
    print(f"{target}: verified (sha256 {SHA256})")


if __name__ == "__main__":
    main()
