"""Kafka, Kafka Connect and the Debezium plugin as jars from Maven Central.

The poms under ``deploy/local`` name the artifacts; ``mvn dependency:copy-dependencies``
copies them into a cache directory keyed by the poms' content, so a changed version
fetches anew and an unchanged one costs nothing.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ambidex.stack.config import REPO_ROOT

POM_DIR = REPO_ROOT / "deploy" / "local"
KAFKA_POM = POM_DIR / "jars" / "pom.xml"
DEBEZIUM_POM = POM_DIR / "debezium" / "pom.xml"
#: the Prometheus JMX exporter's Java agent (kept apart: adding it changed no other jar)
JMX_AGENT_POM = POM_DIR / "jmx" / "pom.xml"
#: optional Connect plugins a stack may ask for (``StackConfig.connect_plugins``), each
#: kept apart like the agent: name -> (pom, the plugin's directory name)
OPTIONAL_PLUGINS = {
    "jdbc-sink": (POM_DIR / "jdbc-sink" / "pom.xml", "debezium-connector-jdbc"),
}


@dataclass(frozen=True)
class JarLayout:
    root: Path

    @property
    def kafka_classpath(self) -> str:
        return str(self.root / "kafka" / "*")

    @property
    def plugin_path(self) -> Path:
        """Connect's plugin.path: one sub-directory per plugin."""
        return self.root / "plugins"

    @property
    def complete_marker(self) -> Path:
        return self.root / ".complete"


def jar_layout(jars_dir: Path) -> JarLayout:
    digest = hashlib.sha256(KAFKA_POM.read_bytes() + DEBEZIUM_POM.read_bytes()).hexdigest()[:12]
    return JarLayout(jars_dir / digest)


class JarFetchError(RuntimeError):
    pass


def ensure_jars(jars_dir: Path, progress: Callable[[str], None] = lambda _: None) -> JarLayout:
    """Fetch the jars unless the cache already holds this exact set."""
    layout = jar_layout(jars_dir)
    if layout.complete_marker.exists():
        return layout
    if shutil.which("mvn") is None:
        raise JarFetchError("mvn is not installed (apt-get install maven); bin/ambidex installs it")
    if layout.root.exists():
        shutil.rmtree(layout.root)
    for pom, target in (
        (KAFKA_POM, layout.root / "kafka"),
        (DEBEZIUM_POM, layout.plugin_path / "debezium-connector-postgres"),
    ):
        copy_dependencies(pom, target, progress)
    layout.complete_marker.write_text("ok\n")
    return layout


def ensure_jmx_agent(jars_dir: Path, progress: Callable[[str], None] = lambda _: None) -> Path:
    """The JMX exporter agent's jar, fetched once into a directory keyed by its pom."""
    digest = hashlib.sha256(JMX_AGENT_POM.read_bytes()).hexdigest()[:12]
    root = jars_dir / f"jmx-agent-{digest}"
    if not (root / ".complete").exists():
        if shutil.which("mvn") is None:
            raise JarFetchError("mvn is not installed (apt-get install maven)")
        shutil.rmtree(root, ignore_errors=True)
        copy_dependencies(JMX_AGENT_POM, root, progress)
        (root / ".complete").write_text("ok\n")
    jars = sorted(root.glob("jmx_prometheus_javaagent-*.jar"))
    if not jars:
        raise JarFetchError(f"no jmx_prometheus_javaagent jar in {root}")
    return jars[-1]


def ensure_optional_plugin(
    jars_dir: Path, name: str, progress: Callable[[str], None] = lambda _: None
) -> Path:
    """An optional plugin (:data:`OPTIONAL_PLUGINS`) fetched once into its own directory
    keyed by its pom; returns the directory to add to Connect's ``plugin.path`` (it holds
    the one plugin directory)."""
    if name not in OPTIONAL_PLUGINS:
        raise JarFetchError(f"unknown Connect plugin {name!r}; known: {sorted(OPTIONAL_PLUGINS)}")
    pom, directory = OPTIONAL_PLUGINS[name]
    root = jars_dir / f"{name}-{hashlib.sha256(pom.read_bytes()).hexdigest()[:12]}"
    if not (root / ".complete").exists():
        if shutil.which("mvn") is None:
            raise JarFetchError("mvn is not installed (apt-get install maven)")
        shutil.rmtree(root, ignore_errors=True)
        copy_dependencies(pom, root / "plugins" / directory, progress)
        (root / ".complete").write_text("ok\n")
    return root / "plugins"


def copy_dependencies(pom: Path, target: Path, progress: Callable[[str], None]) -> None:
    command = [
        "mvn",
        "-B",
        "-f",
        str(pom),
        "dependency:copy-dependencies",
        f"-DoutputDirectory={target}",
        "-DincludeScope=runtime",
    ]
    progress(f"fetching {pom.parent.name} jars from Maven Central")
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert process.stdout is not None
    tail: list[str] = []
    downloaded = 0
    for line in process.stdout:
        tail = [*tail[-30:], line.rstrip()]
        if line.startswith("Downloaded from"):
            downloaded += 1
            if downloaded % 25 == 0:
                progress(f"{pom.parent.name}: {downloaded} artifacts downloaded")
    if process.wait() != 0:
        raise JarFetchError(f"mvn failed for {pom}:\n" + "\n".join(tail))
    progress(f"{pom.parent.name}: {len(list(target.glob('*.jar')))} jars ready")
