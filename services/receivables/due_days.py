"""A customer's amounts due per date, and the state's layout (pure; no I/O).

A customer's next due date and amount are those of the first date, from the as-of
date on, on which one of its contracts (in that currency) next falls due, summed over
the contracts due then. Layout 1 kept one entry per contract
(``Q<account><currency><date><contract>``), so reading it scanned every contract due
that day: a change cost more the more contracts the customer had (issue 11). Layout 2
keeps one entry per date (``W<account><currency><date>`` -> :class:`DueDay`), moved by
each contract position's next due as it changes (the old one out, the new one in), so
the read is the first entry of a short scan, whatever the number of contracts.

A state of layout 1 is migrated once (:func:`migrating`): its ``Q`` entries become ``W``
entries, written through the same key-value port as the fold (the checkpoint's
overlay: the change set goes to the changelog with the next batch, so a restore from
it never brings ``Q`` back), together with the layout in the meta entry ``M``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date
from decimal import Decimal

from services.receivables import codec
from services.receivables.records import ZERO
from services.shared.cooperative import Pausable
from services.shared.state.store import KeyValue

#: the state's layout, in the meta entry (``"layout"``); absent: layout 1 (``Q``)
LAYOUT = 2
#: layout 1's entries: one per contract's next due, ``Q<account><currency><date><contract>``
PER_CONTRACT = b"Q"
#: entries migrated between two pauses (as the other long reads of the state)
MIGRATION_SLICE = 1000

_ZERO_EXPONENT = int(ZERO.as_tuple().exponent)


def _exponent(amount: Decimal) -> int:
    return int(amount.as_tuple().exponent)


@dataclass(frozen=True)
class DueDay:
    """What a customer's contracts have next due on one date: the running ``total`` and
    how many contributions there are per decimal exponent (so :attr:`amount` has the
    exponent that adding the current ones up from :data:`~.records.ZERO` gives, even
    after one with more decimals was taken out: the published text is unchanged)."""

    total: Decimal = ZERO
    exponents: Mapping[int, int] = field(default_factory=dict)

    @property
    def count(self) -> int:
        """The contracts contributing."""
        return sum(self.exponents.values())

    @property
    def amount(self) -> Decimal:
        exponent = min(_ZERO_EXPONENT, *self.exponents)
        return self.total.quantize(Decimal(1).scaleb(exponent))

    def plus(self, amount: Decimal, sign: int) -> DueDay:
        """With a contract's ``amount`` added (``sign`` 1) or taken out (-1)."""
        exponents = dict(self.exponents)
        exponent = _exponent(amount)
        left = exponents.get(exponent, 0) + sign
        if left > 0:
            exponents[exponent] = left
        else:
            exponents.pop(exponent, None)
        return DueDay(self.total + amount if sign > 0 else self.total - amount, exponents)


def encode(entry: DueDay) -> bytes:
    return codec.dumps([str(entry.total), sorted(entry.exponents.items())])


def decode(raw: bytes | None) -> DueDay:
    if raw is None:
        return DueDay()
    total, exponents = codec.loads(raw)
    return DueDay(Decimal(total), {int(e): int(n) for e, n in exponents})


def move(kv: KeyValue, account_id: int, currency: str, due: date, amount: Decimal,
         sign: int) -> None:
    """Add (``sign`` 1) or take out (-1) one contract's next due; the entry goes when no
    contract contributes any more."""
    key = codec.due_day_key(account_id, currency, due)
    entry = decode(kv.get(key)).plus(amount, sign)
    if entry.count > 0:
        kv.put(key, encode(entry))
    else:
        kv.delete(key)


def layout_of(meta: Mapping[str, object] | None) -> int:
    """The layout a state's meta entry says (a state without one: 1)."""
    value = None if meta is None else meta.get("layout")
    return value if isinstance(value, int) else 1


def migrating(kv: KeyValue) -> Pausable[int]:
    """Turn layout 1's per-contract entries into per-date entries and mark the layout
    (pausable every :data:`MIGRATION_SLICE` entries); the entries migrated.

    ``Q`` keys are in (account, currency, date, contract) order, so each date's
    contracts come together: a date is summed as it is read and written once. Each
    slice is a new scan from past the last key, so nothing is iterated across a pause
    nor over the entries deleted."""
    moved = 0
    start: bytes | None = None
    group: bytes | None = None
    entry = DueDay()
    while True:
        entries = []
        for item in kv.scan(PER_CONTRACT, start):
            entries.append(item)
            if len(entries) == MIGRATION_SLICE:
                break
        for key, raw in entries:
            day_key = codec.DUE_DAY + key[1:-8]  # the contract id out
            if day_key != group:
                if group is not None:
                    kv.put(group, encode(entry))
                group, entry = day_key, decode(kv.get(day_key))
            entry = entry.plus(Decimal(raw.decode()), 1)
            kv.delete(key)
        moved += len(entries)
        if len(entries) < MIGRATION_SLICE:
            break
        start = entries[-1][0] + b"\x00"
        yield None
    if group is not None:
        kv.put(group, encode(entry))
    raw_meta = kv.get(codec.META)
    meta = {} if raw_meta is None else dict(codec.loads(raw_meta))
    meta["layout"] = LAYOUT
    kv.put(codec.META, codec.dumps(meta))
    return moved


__all__ = ["LAYOUT", "MIGRATION_SLICE", "DueDay", "layout_of", "migrating", "move"]
