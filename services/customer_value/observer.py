"""What the customer-value process tells an in-process reader (the dashboard).

A :class:`ValueObserver` given to :func:`services.customer_value.app.build_service`
hears, on the service's event loop (keep each call short; no I/O):

1. :meth:`ValueObserver.loaded` once, when the state is open and before the first
   batch is read: every account's figures as the state holds them, every account with
   an open delay risk, and the as-of time (a :class:`Snapshot`). Its ``values`` are
   read from the state one at a time as they are iterated (every figure set at once
   would take some 560 MB at 10,000 customers x 12 months), so iterate them inside
   ``loaded`` only: once it returns, batches fold into the state;
2. :meth:`ValueObserver.committed` after each checkpoint commit that changed
   something: the figures published in that commit (None for a month that emptied:
   its tombstone), the accounts whose open delay risks changed (an account whose last
   risk cleared comes with empty counts), and the as-of time (an :class:`Update`).

Together they keep a reader's copy equal to what the service published, without the
reader touching the state (which is mid-step while a batch folds) or Kafka. A batch
redone after a crash is heard again with the same figures; apply updates by key.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from services.customer_value.figures import CustomerValue
from services.customer_value.fold import ValueKey
from services.customer_value.risks import AccountRisks


@dataclass(frozen=True, slots=True)
class Snapshot:
    #: every account month's figures, made from the state as iterated (inside ``loaded``)
    values: Iterable[CustomerValue]
    risks: Sequence[AccountRisks]
    #: the older of the two databases' source times (None before either was seen)
    as_of: datetime | None


@dataclass(frozen=True, slots=True)
class Update:
    #: (account, month, currency) -> the figures published; None: the month emptied
    values: Mapping[ValueKey, CustomerValue | None]
    #: account -> its open delay risks now (``total == 0``: none left)
    risks: Mapping[int, AccountRisks]
    as_of: datetime | None


class ValueObserver(Protocol):
    def loaded(self, snapshot: Snapshot) -> None: ...

    def committed(self, update: Update) -> None: ...
