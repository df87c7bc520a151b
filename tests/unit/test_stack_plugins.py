"""Optional Connect plugins are asked for by name, survive the trip through the
environment, and are added to the worker's plugin.path beside Debezium's, never
instead of it; a name nobody declared is refused."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from ambidex.stack.config import StackConfig, StackSecrets
from ambidex.stack.jars import JarFetchError, JarLayout, ensure_optional_plugin
from ambidex.stack.processes import ConnectWorker


def test_plugins_are_read_from_the_environment_and_written_back(tmp_path: Path) -> None:
    config = StackConfig.from_env(
        {"AMBIDEX_STATE_DIR": str(tmp_path), "AMBIDEX_STACK_CONNECT_PLUGINS": " jdbc-sink, x ,"}
    )
    assert config.connect_plugins == ("jdbc-sink", "x")
    assert StackConfig.from_env(config.environment()).connect_plugins == ("jdbc-sink", "x")


def test_no_plugins_by_default(tmp_path: Path) -> None:
    config = StackConfig.from_env({"AMBIDEX_STATE_DIR": str(tmp_path)})
    assert config.connect_plugins == ()
    assert "AMBIDEX_STACK_CONNECT_PLUGINS" not in config.environment()


def test_an_unknown_plugin_is_refused(tmp_path: Path) -> None:
    with pytest.raises(JarFetchError, match="unknown Connect plugin"):
        ensure_optional_plugin(tmp_path, "no-such-plugin")


def test_the_worker_gets_the_plugin_directories_after_debezium(tmp_path: Path) -> None:
    config = replace(StackConfig.from_env({"AMBIDEX_STATE_DIR": str(tmp_path)}),
                     connect_plugins=("jdbc-sink",))
    layout = JarLayout(tmp_path / "jars")
    extra = tmp_path / "jars" / "jdbc-sink-abc" / "plugins"
    worker = ConnectWorker(config, layout, StackSecrets("p", "c", "a"), extra_plugin_paths=[extra])
    worker._write_properties()
    properties = dict(
        line.split("=", 1) for line in worker.properties.read_text().splitlines() if line
    )
    assert properties["plugin.path"] == f"{layout.plugin_path},{extra}"
