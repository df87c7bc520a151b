"""Delivery rate: a Faust agent against aiokafka's ``getmany`` and a ``BatchSource``.

Not a test: it prints figures and the command that reproduces them.

    uv run python -m bench.faust_delivery                      # a private broker, ~3 min
    uv run python -m bench.faust_delivery --records 400000 --runs 5

Why the services read their change topics with :class:`services.shared.batches.BatchSource`
instead of Faust agents (docs/adr/0001-faust-as-worker-shell.md): this measures how
many records a second each way hands to code that does nothing with them. One private
Kafka broker (no PostgreSQL, no Connect), one topic of ``--records`` change envelopes
(a realistic ``cdc.crm.sales_order_line`` insert, ~1 KB) over 3 partitions like the
CDC topics; every run reads the whole topic from the start in a fresh consumer group:

* ``faust-agent``: a Faust app (at_least_once, raw bytes) whose agent only counts
  ``stream.events()`` (each event acknowledged, offsets committed by Faust);
* ``faust-take``: the same agent reading ``stream.take(5000, within=0.02)`` batches;
* ``aiokafka-getmany``: a plain consumer's ``getmany`` with the services' fetch sizes;
* ``batch-source``: the services' own ``BatchSource`` (offset ledger, commits).

The rate is records from the first delivered one to the last (group join excluded).
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from ambidex.stack.config import StackConfig
from ambidex.stack.local import LocalStack
from bench.common import reproduce_line, run_bench
from bench.decode import envelope
from services.shared.batches import BatchSource, RecordBatch
from services.shared.runtime import build_service
from services.shared.settings import load_settings

ROOT = Path(__file__).resolve().parents[1]
PARTITIONS = 3
#: what BatchSource fetches per call and per partition (services/shared/batches.py)
MAX_RECORDS = 5000
PARTITION_FETCH_BYTES = 512 * 1024


@dataclass
class Count:
    """Records seen, and when the first and the last of ``expected`` arrived."""

    expected: int
    seen: int = 0
    first: float = 0.0
    last: float = 0.0
    done: asyncio.Event = field(default_factory=asyncio.Event)

    def add(self, records: int) -> None:
        now = time.perf_counter()
        if self.seen == 0:
            self.first = now
        self.seen += records
        if self.seen >= self.expected and not self.done.is_set():
            self.last = now
            self.done.set()

    @property
    def per_second(self) -> float:
        return self.expected / max(self.last - self.first, 1e-9)


#: (bootstrap, topic, records) -> records a second
Reader = Callable[[str, str, int], Awaitable[float]]


def faust_worker(bootstrap: str, topic: str, records: int, take: int | None,
                 result: Path) -> None:
    """Run a Faust worker (as the services ran theirs) until ``records`` arrived, write
    the rate to ``result`` and stop. Runs in its own process (``--faust-worker``)."""
    import os
    import signal

    import faust

    datadir = Path(tempfile.mkdtemp(prefix="faust-bench-"))
    app = faust.App(
        f"bench-faust-{uuid.uuid4().hex[:8]}",
        broker=f"kafka://{bootstrap}",
        datadir=str(datadir),
        processing_guarantee="at_least_once",
        consumer_auto_offset_reset="earliest",
        web_enabled=False,
        topic_disable_leader=True,
        # what the services' Faust apps were configured with while they had agents
        producer_acks=-1,
        broker_commit_every=1000,
        broker_commit_interval=1.0,
        stream_buffer_maxsize=8192,
        broker_session_timeout=10.0,
        broker_heartbeat_interval=1.0,
    )
    source = app.topic(topic, key_type=bytes, value_type=bytes, key_serializer="raw",
                       value_serializer="raw", internal=False)
    count = Count(records)

    def finish() -> None:
        result.write_text(f"{count.per_second}\n")
        os.kill(os.getpid(), signal.SIGTERM)

    if take is None:
        @app.agent(source)
        async def deliver(stream: faust.StreamT[bytes]) -> None:
            async for _event in stream.events():
                count.add(1)
                if count.done.is_set():
                    finish()
    else:
        @app.agent(source)
        async def deliver_batches(stream: faust.StreamT[bytes]) -> None:
            async for values in stream.take(take, within=0.02):
                count.add(len(values))
                if count.done.is_set():
                    finish()

    try:
        faust.Worker(app, loglevel="WARNING", quiet=True).execute_from_commandline()
    finally:
        shutil.rmtree(datadir, ignore_errors=True)


async def faust_reader(bootstrap: str, topic: str, records: int, *, take: int | None) -> float:
    with tempfile.TemporaryDirectory() as scratch:
        result = Path(scratch) / "rate"
        command = [sys.executable, "-m", "bench.faust_delivery", "--faust-worker",
                   bootstrap, topic, str(records), str(take or 0), str(result)]
        log = Path(scratch) / "worker.log"
        with log.open("wb") as out:  # Faust's console spinner and client warnings
            process = await asyncio.create_subprocess_exec(
                *command, cwd=ROOT, stdout=out, stderr=asyncio.subprocess.STDOUT)
            await process.wait()
        if not result.exists():
            tail = log.read_text(errors="replace")[-2000:]
            raise RuntimeError(f"the Faust worker exited ({process.returncode}) without a "
                               f"rate:\n{tail}")
        return float(result.read_text())


async def getmany_reader(bootstrap: str, topic: str, records: int) -> float:
    count = Count(records)
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=bootstrap, group_id=f"bench-getmany-{uuid.uuid4().hex[:8]}",
        enable_auto_commit=False, auto_offset_reset="earliest",
        max_poll_records=MAX_RECORDS, fetch_max_wait_ms=20,
        max_partition_fetch_bytes=PARTITION_FETCH_BYTES,
    )
    await consumer.start()
    try:
        while not count.done.is_set():
            fetched = await consumer.getmany(timeout_ms=100, max_records=MAX_RECORDS)
            count.add(sum(len(batch) for batch in fetched.values()))
    finally:
        await consumer.stop()
    return count.per_second


async def batch_source_reader(bootstrap: str, topic: str, records: int) -> float:
    count = Count(records)
    settings = load_settings("bench-delivery", {
        "AMBIDEX_KAFKA_BOOTSTRAP": bootstrap,
        "AMBIDEX_SCHEMAS_DIR": str(ROOT / "schemas"),
        "AMBIDEX_LOG_FORMAT": "console",
    })
    service = build_service(settings)

    async def handle(batch: RecordBatch) -> None:
        count.add(len(batch.records))

    source = BatchSource(service, f"run-{uuid.uuid4().hex[:8]}", [topic], handle,
                         max_records=MAX_RECORDS, partition_fetch_bytes=PARTITION_FETCH_BYTES)
    await source.start()
    try:
        await count.done.wait()
    finally:
        await source.stop()
    return count.per_second


READERS: dict[str, Reader] = {
    "faust-agent": lambda b, t, c: faust_reader(b, t, c, take=None),
    "faust-take": lambda b, t, c: faust_reader(b, t, c, take=MAX_RECORDS),
    "aiokafka-getmany": getmany_reader,
    "batch-source": batch_source_reader,
}


async def fill_topic(bootstrap: str, topic: str, records: int) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, PARTITIONS, 1)])
    finally:
        await admin.close()
    key, value = envelope("cdc.crm.sales_order_line")
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5,
                                max_batch_size=512 * 1024, compression_type="zstd")
    await producer.start()
    try:
        pending = []
        for i in range(records):
            pending.append(await producer.send(topic, value=value, key=key + str(i).encode(),
                                               partition=i % PARTITIONS))
            if len(pending) >= 20_000:
                await asyncio.gather(*pending)
                pending.clear()
        await asyncio.gather(*pending)
    finally:
        await producer.stop()


async def start_private_broker(progress: Callable[[str], None]) -> tuple[LocalStack, Path]:
    """Only the Kafka broker of a private stack (free ports, a new temporary directory)."""
    state_dir = Path(tempfile.mkdtemp(prefix="ambidex-bench-"))
    state_dir.chmod(0o755)
    stack = LocalStack(StackConfig.from_env().ephemeral(state_dir), progress=progress)
    try:
        await stack.kafka.start()
        await stack.wait_kafka()
    except BaseException:
        await stack.down()
        shutil.rmtree(state_dir, ignore_errors=True)
        raise
    return stack, state_dir


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--records", type=int, default=20_000)
    parser.add_argument("--runs", type=int, default=3, help="runs of each reader")
    parser.add_argument("--readers", default=",".join(READERS),
                        help=f"comma-separated subset of {', '.join(READERS)}")
    args = parser.parse_args()
    readers = [name.strip() for name in args.readers.split(",") if name.strip()]

    stack, state_dir = await start_private_broker(
        lambda m: print(f"  broker: {m}", file=sys.stderr))
    try:
        bootstrap = stack.config.kafka_bootstrap
        topic = f"bench.delivery.{uuid.uuid4().hex[:8]}"
        started = time.perf_counter()
        await fill_topic(bootstrap, topic, args.records)
        print(f"  topic {topic}: {args.records:,} records in "
              f"{time.perf_counter() - started:.1f}s", file=sys.stderr)
        rates: dict[str, list[float]] = {name: [] for name in readers}
        for run in range(args.runs):
            for name in readers:  # interleaved, so machine noise spreads over all of them
                rate = await asyncio.wait_for(
                    READERS[name](bootstrap, topic, args.records), timeout=600)
                rates[name].append(rate)
                print(f"  run {run + 1} {name}: {rate:,.0f} records/s", file=sys.stderr)
    finally:
        await stack.down()
        shutil.rmtree(state_dir, ignore_errors=True)

    print()
    print(f"Delivery to a handler that only counts: {args.records:,} records, "
          f"{PARTITIONS} partitions, {args.runs} runs each (median, min-max)")
    for name in readers:
        values = rates[name]
        print(f"  {name:18} {statistics.median(values):10,.0f} records/s "
              f"({min(values):,.0f}-{max(values):,.0f})")
    print(f"  reproduce: {reproduce_line('bench.faust_delivery')}")


if __name__ == "__main__":
    if len(sys.argv) == 7 and sys.argv[1] == "--faust-worker":
        bootstrap_, topic_, records_, take_, result_ = sys.argv[2:]
        sys.argv[1:] = ["worker"]  # what Faust's command line expects
        faust_worker(bootstrap_, topic_, int(records_), int(take_) or None, Path(result_))
    else:
        run_bench(main())
