"""Never the bottleneck: every service's consumer lag while the sample workload runs flat out.

Not a test: it prints figures and the command that reproduces them.

    uv run python -m bench.system                       # a private stack on free ports
    uv run python -m bench.system --seconds 180 --rate 200

A private stack as ``bin/ambidex up`` makes it (seeded; all five services, each in its
own process under its supervisor; the pipeline exporter; the JMX agent in the Connect
worker), in a temporary state directory. Once every service is ready and has caught up
with the seed's snapshot, the sample workload (``ambidex workload run``, its own
process) is offered ``--rate`` operations/s for ``--seconds``: more than it can do, so
its pacer's back-pressure makes it run at its highest sustained rate on this machine,
which it reports (achieved operations/s, row changes/s).

Every second the bench scrapes the pipeline exporter (refreshing every second here:
``kafka_consumergroup_lag`` per group, topic and partition; the partitions' end offsets;
``ambidex_replication_slot_confirmed_lag_bytes``) and the Connect worker's JMX exporter
(Debezium's ``TotalNumberOfEventsSeen`` and ``MilliSecondsBehindSource`` per
connector). Per consumer group: its lag summed over its partitions, judged by
:func:`bench.stats.lag_trend` against the input rate of its own topics (flat: the
least-squares slope at most 2 % of the input rate, and the largest lag at most
``--tolerance-s`` seconds of input), after ``--settle`` seconds. Per capture database:
events/s Debezium saw, its milliseconds behind the source, and the slot's confirmed
lag (judged flat the same way, in WAL bytes against the WAL rate).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import sys
import time
from collections import defaultdict
from dataclasses import dataclass, field

import asyncpg
import httpx
from prometheus_client.parser import text_string_to_metric_families

from ambidex.stack.local import LocalStack
from ambidex.stack.pipeline_metrics import EXPORTER, metrics_endpoints
from ambidex.stack.ports import recorded_ports
from bench.common import reproduce_line, run_bench, start_private_stack
from bench.stats import LagTrend, lag_trend, percentile
from services.registry import available_services

DATABASES = ("crm", "erp")


def log(message: str) -> None:
    print(f"  {time.strftime('%H:%M:%S')} {message}", file=sys.stderr, flush=True)


@dataclass
class Sample:
    at: float
    group_lag: dict[str, float]  #: consumer group -> lag summed over its partitions
    group_topics: dict[str, set[str]]
    topic_end: dict[str, float]  #: topic -> end offsets summed over its partitions
    slot_behind: dict[str, float]  #: database -> confirmed lag bytes of its ambidex slot
    events_seen: dict[str, float]  #: Debezium server (cdc.crm, cdc.erp) -> events seen
    behind_ms: dict[str, float]  #: Debezium server -> MilliSecondsBehindSource
    wal_lsn: dict[str, float] = field(default_factory=dict)  #: database -> current LSN


def _parse(exporter: str, connect: str) -> Sample:
    sample = Sample(time.monotonic(), defaultdict(float), defaultdict(set), defaultdict(float),
                    {}, {}, {})
    for family in text_string_to_metric_families(exporter):
        for s in family.samples:
            if s.name == "kafka_consumergroup_lag":
                group = s.labels["consumergroup"]
                sample.group_lag[group] += s.value
                sample.group_topics[group].add(s.labels["topic"])
            elif s.name == "kafka_topic_partition_current_offset":
                sample.topic_end[s.labels["topic"]] += s.value
            elif (s.name == "ambidex_replication_slot_confirmed_lag_bytes"
                  and s.labels["slot"].startswith("ambidex_")):
                sample.slot_behind[s.labels["database"]] = s.value
    for family in text_string_to_metric_families(connect):
        for s in family.samples:
            if s.name.startswith("debezium_postgres_streaming_totalnumberofeventsseen"):
                sample.events_seen[s.labels["server"]] = s.value
            elif s.name.startswith("debezium_postgres_streaming_millisecondsbehindsource"):
                sample.behind_ms[s.labels["server"]] = s.value
    return sample


async def _wal_lsns(stack: LocalStack) -> dict[str, float]:
    lsns = {}
    for database in DATABASES:
        conn = await asyncpg.connect(stack.addresses.admin_dsn(database))
        try:
            lsns[database] = float(await conn.fetchval(
                "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0')"))
        finally:
            await conn.close()
    return lsns


async def _scrape(stack: LocalStack, client: httpx.AsyncClient) -> Sample:
    endpoints = metrics_endpoints(stack.config)
    exporter, connect = await asyncio.gather(
        client.get(endpoints[EXPORTER]), client.get(endpoints["kafka-connect"]))
    sample = _parse(exporter.text, connect.text)
    sample.wal_lsn = await _wal_lsns(stack)
    return sample


async def _wait_ready(stack: LocalStack, names: list[str], timeout: float = 900) -> None:
    ports = recorded_ports(stack.config.state_dir)
    deadline = time.monotonic() + timeout
    async with httpx.AsyncClient(timeout=5) as client:
        for name in names:
            while True:
                try:
                    url = f"http://{stack.config.host}:{ports[name]}/readyz"
                    if (await client.get(url)).status_code == 200:
                        log(f"{name}: ready")
                        break
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{name} not ready after {timeout:.0f}s")
                await asyncio.sleep(1)


#: a group this close to the end is caught up: an idle stack's heartbeats keep arriving
#: (per database a heartbeat record and the BEGIN and END of its action query's
#: transaction), and the exporter's figure trails by a few of them. On 2026-12-04 it
#: showed 21 records for every group of the services that read both databases'
#: heartbeats (1 s apart), for good, while the groups' committed offsets, read
#: directly, were within 1-2 s of the ends
IDLE_LAG = 40


async def _wait_caught_up(stack: LocalStack, groups: int, timeout: float = 120) -> None:
    """Until the exporter shows at least ``groups`` groups, every one within
    :data:`IDLE_LAG` records of its partitions' ends."""
    deadline = time.monotonic() + timeout
    behind: dict[str, float] = {}
    async with httpx.AsyncClient(timeout=30) as client:
        while time.monotonic() < deadline:
            try:
                sample = await _scrape(stack, client)
            except (httpx.HTTPError, OSError, asyncpg.PostgresError) as error:
                log(f"scrape failed ({error!r}), again")
                continue
            behind = {g: lag for g, lag in sample.group_lag.items() if lag > IDLE_LAG}
            if len(sample.group_lag) >= groups and not behind:
                return
            await asyncio.sleep(2)
    log(f"not every group caught up after {timeout:.0f}s: {behind}; measuring anyway")


def _judge_groups(samples: list[Sample], tolerance_s: float) -> dict[str, tuple[LagTrend, float]]:
    """Per group: its lag trend, against the input rate of its own topics."""
    first, last = samples[0], samples[-1]
    seconds = max(last.at - first.at, 1e-9)
    verdicts = {}
    for group in sorted(last.group_lag):
        topics = last.group_topics[group]
        arrived = sum(last.topic_end.get(t, 0) - first.topic_end.get(t, 0) for t in topics)
        rate = arrived / seconds
        points = [(s.at - first.at, s.group_lag.get(group, 0.0)) for s in samples]
        verdicts[group] = (lag_trend(points, rate=rate, tolerance_s=tolerance_s), rate)
    return verdicts


@dataclass(frozen=True)
class Capture:
    events_per_s: float
    wal_per_s: float
    slot: LagTrend  #: the slot's confirmed lag (bytes) against the WAL rate
    behind_p50_ms: float
    behind_max_ms: float


def _judge_capture(samples: list[Sample], tolerance_s: float) -> dict[str, Capture]:
    first, last = samples[0], samples[-1]
    seconds = max(last.at - first.at, 1e-9)
    result: dict[str, Capture] = {}
    for database in DATABASES:
        server = f"cdc.{database}"
        wal_rate = (last.wal_lsn[database] - first.wal_lsn[database]) / seconds
        points = [(s.at - first.at, s.slot_behind.get(database, 0.0)) for s in samples]
        trend = lag_trend(points, rate=wal_rate, tolerance_s=tolerance_s)
        behind = [s.behind_ms.get(server, 0.0) for s in samples]
        seen = last.events_seen.get(server, 0) - first.events_seen.get(server, 0)
        result[database] = Capture(seen / seconds, wal_rate, trend,
                                   percentile(behind, 0.5), max(behind))
    return result


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--seconds", type=float, default=180, help="workload duration")
    parser.add_argument("--rate", type=float, default=200,
                        help="operations/s offered to the workload (above what it reaches)")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--settle", type=float, default=15,
                        help="seconds of the run left out of the judgement")
    parser.add_argument("--tolerance-s", type=float, default=10,
                        help="largest lag still flat, in seconds of the group's input")
    args = parser.parse_args()
    load_before = os.getloadavg()
    os.environ["AMBIDEX_EXPORTER_INTERVAL_S"] = "1"  # the exporter inherits it

    stack, state_dir = await start_private_stack(lambda m: log(f"stack: {m}"))
    names = available_services()
    samples: list[Sample] = []
    loads: list[float] = []
    missed = 0
    workload_out = state_dir / "workload.out"
    try:
        stack.start_services(names)
        await _wait_ready(stack, names)
        log("waiting until every service has caught up with the seed")
        await _wait_caught_up(stack, groups=len(names))
        log(f"workload: {args.rate:g} operations/s offered for {args.seconds:.0f}s")
        with workload_out.open("wb") as out:
            workload = subprocess.Popen(
                [sys.executable, "-m", "ambidex.cli", "workload", "run", "--rate",
                 str(args.rate), "--duration", str(args.seconds), "--seed", str(args.seed),
                 "--quiet"],
                env={**os.environ, **stack.config.environment()},
                stdout=out, stderr=subprocess.STDOUT)
        started = time.monotonic()
        async with httpx.AsyncClient(timeout=30) as client:
            next_at = started
            while workload.poll() is None:
                try:  # a loaded machine may answer a scrape late: that second is missing
                    samples.append(await _scrape(stack, client))
                except (httpx.HTTPError, OSError, asyncpg.PostgresError) as error:
                    missed += 1
                    log(f"scrape failed ({error!r})")
                loads.append(os.getloadavg()[0])
                if len(samples) % 30 == 0:
                    lags = ", ".join(f"{g} {v:,.0f}" for g, v in
                                     sorted(samples[-1].group_lag.items()))
                    log(f"{time.monotonic() - started:5.0f}s lag: {lags}")
                next_at = max(next_at + 1.0, time.monotonic())
                await asyncio.sleep(max(0.0, next_at - time.monotonic()))
        if workload.returncode != 0:
            raise RuntimeError(f"workload failed: {workload_out.read_text()[-2000:]}")
        text = workload_out.read_text()
        summary = json.loads(text[text.index("{\n"):])
    finally:
        await stack.down()
        shutil.rmtree(state_dir, ignore_errors=True)

    judged = [s for s in samples if s.at - samples[0].at >= args.settle]
    groups = _judge_groups(judged, args.tolerance_s)
    capture = _judge_capture(judged, args.tolerance_s)
    operations = sum(summary["completed"].values())
    elapsed = float(summary["elapsed"])
    print()
    print(f"Never the bottleneck: all {len(names)} services and the sample workload "
          f"(one machine, {os.cpu_count()} cores, shared; load average {load_before[0]:.1f} "
          f"before, {percentile(loads, 0.5):.1f} median during)")
    print(f"  workload          {operations / elapsed:,.1f} operations/s achieved of "
          f"{args.rate:g} offered ({operations:,} in {elapsed:.0f}s), "
          f"{summary['row_changes'] / elapsed:,.0f} row changes/s")
    print(f"  sampled           {len(samples)} times ({missed} scrapes failed), ~1/s; "
          f"judged after {args.settle:.0f}s "
          f"({len(judged)} samples); flat = slope <= 2% of input, max <= "
          f"{args.tolerance_s:g} s of input")
    for database, c in capture.items():
        print(f"  capture {database:<9} {c.events_per_s:,.0f} events/s seen, "
              f"{c.wal_per_s / 1024:,.0f} KiB WAL/s; behind source p50 "
              f"{c.behind_p50_ms:,.0f} ms, max {c.behind_max_ms:,.0f} ms; slot lag max "
              f"{c.slot.max_lag / 1024:,.0f} KiB, slope {c.slot.slope_per_s / 1024:+,.1f} "
              f"KiB/s: {c.slot.reason}")
    for group, (trend, rate) in groups.items():
        print(f"  {group:<28} input {rate:8,.1f}/s  lag max {trend.max_lag:8,.0f}  last "
              f"{trend.last_lag:6,.0f}  slope {trend.slope_per_s:+8.2f}/s  {trend.reason}")
    print(f"reproduce: {reproduce_line('bench.system')}")


if __name__ == "__main__":
    run_bench(main())
