"""What the services keep in memory per transaction, row and letter seen: the bytes of
each id memory after feeding it history, at several history lengths.

Not a test: it prints figures and the command that reproduces them.

    uv run python -m bench.id_memories                  # 25k .. 300k of each
    uv run python -m bench.id_memories --steps 1000 50000

Each memory is fed the way the service feeds it, in-process (no servers):

* ``holder``: one :class:`~services.shared.holding.TransactionHolder` (what each service
  keeps per source database) fed whole CRM transactions (a header and two lines, then
  the END marker) plus as many END markers of transactions of other tables;
* ``echo memory``: order-sync's :class:`~services.order_sync.echo_memory.EchoMemory`
  told about written ERP orders and their two lines (sha-256 fingerprints, as written);
* ``dead-letter index``: the identities a dead-letter publisher remembers.

A memory whose bytes keep rising with the history fed is one the soak sees as growth
(``bench/soak.py``); bounded ones stay flat once full. Bytes are those of the objects
the memory keeps alive (``sys.getsizeof`` over everything it references), measured
after each step.
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import sys
import types
from collections.abc import Callable, Iterator
from datetime import timedelta

from bench.common import reproduce_line
from services.order_sync.echo_memory import EchoMemory
from services.shared.holding import Released, TransactionHolder
from services.shared.transactions import TransactionMarker, TransactionStatus
from tests.builders import change_event

COLLECTIONS = ("crm.sales_order", "crm.sales_order_line")


def _end(xid: str, counts: dict[str, int], lsn: int) -> TransactionMarker:
    return TransactionMarker(
        TransactionStatus.END, xid, f"{xid}:{lsn}", sum(counts.values()), counts
    )


def feed_holder(holder: TransactionHolder[int], start: int, count: int) -> None:
    """``count`` applied order transactions and ``count`` END markers of other tables."""
    released: Released[int] = Released()
    for n in range(start, start + count):
        xid = str(2 * n + 1_000)
        lsn = 16 * (2 * n + 1_000)
        for order, table in enumerate(("sales_order", "sales_order_line", "sales_order_line")):
            event = change_event(
                "crm", table, after={"id": n * 3 + order}, commit_lsn=lsn, lsn=lsn + order,
                transaction_id=xid, order=order + 1,
            )
            holder.add_change(event, n, released)
        holder.add_marker(
            _end(xid, {"crm.sales_order": 1, "crm.sales_order_line": 2}, lsn + 8), n, released
        )
        other = str(2 * n + 1_001)
        holder.add_marker(_end(other, {"crm.account": 1}, lsn + 16), n, released)
        released.complete.clear()
        released.ack_now.clear()


def feed_echo_memory(memory: EchoMemory, start: int, count: int) -> None:
    """``count`` ERP orders written, each with two lines."""
    for n in range(start, start + count):
        rows = [
            (table, row_id, hashlib.sha256(f"{table}{row_id}".encode()).hexdigest())
            for table, row_id in (
                ("erp.sales_order", n), ("erp.sales_order_line", 2 * n),
                ("erp.sales_order_line", 2 * n + 1),
            )
        ]
        memory.remember_writes(rows)
        memory.remember_order(n, n + 7, f"SO{n:07d}")


def feed_letter_index(known: object, start: int, count: int) -> None:
    """``count`` letters published (the identities the publisher remembers)."""
    add = known.add  # type: ignore[attr-defined]
    for n in range(start, start + count):
        add((f"cdc.crm.sales_order_line:0:{n}".encode(), "bad_input"))


def letter_index() -> object:
    """The publisher's memory of published letters, as it is built now."""
    from services.shared import deadletters

    publisher = deadletters.KafkaDeadLetterPublisher.__new__(
        deadletters.KafkaDeadLetterPublisher
    )
    deadletters.KafkaDeadLetterPublisher.__init__(publisher, None, _NoCodec())  # type: ignore[arg-type]
    return publisher.known


class _NoCodec:
    def headers(self, _: str) -> list[tuple[str, bytes]]:
        return []


def deep_size(subject: object) -> int:
    """Bytes of ``subject`` and of every object it reaches (not classes, modules or
    functions): what it keeps alive. Walking the references costs nothing while the
    memory is fed, unlike tracing every allocation."""
    seen: set[int] = set()
    stack = [subject]
    total = 0
    while stack:
        obj = stack.pop()
        if id(obj) in seen or isinstance(obj, _SHARED):
            continue
        seen.add(id(obj))
        total += sys.getsizeof(obj)
        stack.extend(gc.get_referents(obj))
    return total


_SHARED = (type, types.ModuleType, types.FunctionType, types.BuiltinFunctionType,
           types.MethodType)


def measure(
    make: Callable[[], object], feed: Callable[[object, int, int], None], steps: list[int]
) -> Iterator[tuple[int, float]]:
    subject = make()
    fed = 0
    for step in steps:
        feed(subject, fed, step - fed)
        fed = step
        yield step, deep_size(subject) / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument(
        "--steps", type=int, nargs="+", default=[25_000, 100_000, 200_000, 300_000],
        help="history lengths to measure at (transactions, orders, letters)",
    )
    args = parser.parse_args()
    steps = sorted(args.steps)
    subjects: list[tuple[str, Callable[[], object], Callable[[object, int, int], None]]] = [
        (
            "holder (one source database)",
            lambda: TransactionHolder("crm", COLLECTIONS, max_hold=timedelta(seconds=300)),
            feed_holder,  # type: ignore[arg-type]
        ),
        ("echo memory (order-sync)", EchoMemory, feed_echo_memory),  # type: ignore[arg-type]
        ("dead-letter index", letter_index, feed_letter_index),
    ]
    print("Ambidex id memories: MiB kept after feeding history (in-process)")
    print(f"  {'memory':32}" + "".join(f"{s:>12,}" for s in steps))
    for name, make, feed in subjects:
        sizes = dict(measure(make, feed, steps))
        print(f"  {name:32}" + "".join(f"{sizes[s]:12.1f}" for s in steps))
    print(f"  reproduce: {reproduce_line('bench.id_memories')}")


if __name__ == "__main__":
    main()
