"""Flink SQL beside inventory-projection: the same topic, the same run (``--flink``).

``uv run python -m bench.inventory --flink`` replays the stock-quant topic through the
service and then through the Flink SQL job of ``bench/flink/job.py`` (latest row version,
on-hand per item x warehouse into ``upsert-kafka``, RocksDB state, checkpoints every
10 s, parallelism 1), and prints both rates and peak memories side by side.

PyFlink pins its own numpy, pyarrow and Apache Beam, so it lives in its own environment
in the cache (``~/.cache/ambidex/flink/venv``, ``apache-flink`` from
``bench/flink/requirements.txt``, created with uv on first use), and Flink's Kafka SQL
connector comes from Maven Central (``bench/flink/pom.xml``). The job runs in Flink's
local mini-cluster (one JVM started by PyFlink): its rate is changes / the job's own
time (submission to the end of the bounded source, JVM start excluded); its memory is
the peak RSS of the whole process tree (Python + JVM), sampled every 0.5 s; its CPU is
that tree's user + system time over the job's own time, so the two can be compared per
CPU-second as well as per second (the JVM uses more than one core at parallelism 1).
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ambidex.stack.jars import copy_dependencies
from bench.cpus import tree

HERE = Path(__file__).resolve().parent / "flink"
CACHE = Path(os.environ.get("AMBIDEX_CACHE_DIR", Path.home() / ".cache" / "ambidex")) / "flink"


@dataclass(frozen=True)
class FlinkRun:
    seconds: float
    peak_rss_mb: float
    #: user + system CPU of the Python + JVM tree over ``seconds`` (every core it used)
    cpu_seconds: float


def _log(message: str) -> None:
    print(f"  {message}", file=sys.stderr, flush=True)


def ensure_flink() -> tuple[Path, Path]:
    """``(python of the Flink environment, connector jar)``, made on first use."""
    python = CACHE / "venv" / "bin" / "python"
    marker = CACHE / "venv" / ".requirements"
    wanted = (HERE / "requirements.txt").read_text()
    if not python.exists() or not marker.exists() or marker.read_text() != wanted:
        _log(f"creating the Flink environment in {CACHE / 'venv'} (apache-flink, ~1 min)")
        subprocess.run(
            ["uv", "venv", "-q", "--allow-existing", "-p", sys.executable, str(CACHE / "venv")],
            check=True,
        )
        subprocess.run(["uv", "pip", "install", "-q", "-r", str(HERE / "requirements.txt")],
                       check=True, env={**os.environ, "VIRTUAL_ENV": str(CACHE / "venv")})
        marker.write_text(wanted)
    jars = sorted((CACHE / "jars").glob("flink-sql-connector-kafka-*.jar"))
    if not jars:
        copy_dependencies(HERE / "pom.xml", CACHE / "jars", _log)
        jars = sorted((CACHE / "jars").glob("flink-sql-connector-kafka-*.jar"))
    return python, jars[-1]


def _tree_rss_mb(pid: int) -> float:
    """RSS of ``pid`` and every descendant (the JVM is PyFlink's child)."""
    total = 0
    for member in tree(pid):
        try:
            fields = Path(f"/proc/{member}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[21]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, IndexError, ValueError):
            continue
    return total / 1e6


async def run_flink(bootstrap: str, source_topic: str, sink_topic: str, *,
                    started: Callable[[int], None] | None = None) -> FlinkRun:
    """Run the job over ``source_topic`` to its current end; ``sink_topic`` must exist.
    ``started``: called with the job's process id once it runs (before its JVM starts)."""
    python, jar = ensure_flink()
    command = [
        str(python), str(HERE / "job.py"), "--bootstrap", bootstrap,
        "--source", source_topic, "--sink", sink_topic, "--jar", str(jar),
    ]
    process = await asyncio.create_subprocess_exec(
        *command, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    if started is not None:
        started(process.pid)
    peak = 0.0
    output = asyncio.ensure_future(process.communicate())
    started = last_log = time.monotonic()
    while not output.done():
        peak = max(peak, _tree_rss_mb(process.pid))
        if time.monotonic() - last_log >= 30:
            last_log = time.monotonic()
            _log(f"flink: running for {last_log - started:.0f}s, {peak:,.0f} MB peak")
        await asyncio.sleep(0.5)
    stdout, stderr = await output
    if process.returncode != 0:
        tail = stderr.decode(errors="replace").splitlines()[-30:]
        raise RuntimeError("the Flink job failed:\n" + "\n".join(tail))
    figures = json.loads(stdout.decode().strip().splitlines()[-1])
    return FlinkRun(seconds=float(figures["seconds"]), peak_rss_mb=peak,
                    cpu_seconds=float(figures["cpu_seconds"]))
