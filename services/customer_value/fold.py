"""customer-value's incremental core over the ``KeyValue`` state (pure).

State is a function of the latest version of each source row: each row's node is kept
with its source position and where its contribution sits, so a new version takes its
old contribution out and puts the new one in (a redelivered or older version changes
nothing). The cost of a change does not grow with the customer's history: a row touches
its own node, at most two buckets and its parent; only when what a row hands its
children changes (an ERP order moved to another customer, a shipment's month, a
contract's month) are the children moved, and when an ERP customer is linked to
another CRM account the figures of its months are re-sent (rare, and bounded by its
months, not its rows).

Keys (``|``-separated text):

- ``n|<source>|<id>`` -> the row's node: position, deleted, parent, own and resolved
  anchor, figures, counted, link, and the bucket its contribution sits in;
- ``c|<parent source>|<parent id>|<source>|<id>`` -> a child of a row, and
  ``k|<source>|<id>`` -> how many children it has (no scan for a row without);
- ``b|<owner>|<month>|<currency>`` -> the bucket (per source: rows and figure sums);
- ``l|<crm account>|<erp customer>`` -> an ERP customer linked to the account.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import orjson

from services.customer_value.figures import (
    Bucket,
    CustomerValue,
    add_to,
    decode_bucket,
    encode_bucket,
    merged,
)
from services.customer_value.sources import NOWHERE, Anchor, Node
from services.shared.state.store import KeyValue

#: a source position: ``(commit_lsn, lsn)`` of a database row, ``(offset,)`` of a
#: published record; compared only between versions of the same row
Position = Sequence[int]
#: (account, month, currency)
ValueKey = tuple[int, str, str]


@dataclass
class Touched:
    """What one change moved: the buckets (by owner) and the account figures
    (``values``) they count for."""

    buckets: set[tuple[str, str, str]] = field(default_factory=set)
    values: set[ValueKey] = field(default_factory=set)
    stale: bool = False


@dataclass
class _State:
    """A node as stored."""

    position: list[int]
    deleted: bool
    parent: tuple[str, int] | None
    own: Anchor
    resolved: Anchor
    figures: dict[str, Decimal]
    counted: bool
    link: int | None
    at: str | None  # the bucket key its contribution sits in

    def encode(self) -> bytes:
        return orjson.dumps({
            "p": self.position, "d": self.deleted,
            "par": None if self.parent is None else list(self.parent),
            "own": self.own.encode(), "res": self.resolved.encode(),
            "f": {k: str(v) for k, v in self.figures.items()}, "k": self.counted,
            "l": self.link, "at": self.at,
        })

    @classmethod
    def decode(cls, raw: bytes) -> _State:
        d: dict[str, Any] = orjson.loads(raw)
        parent = d["par"]
        return cls(d["p"], d["d"], None if parent is None else (parent[0], parent[1]),
                   Anchor.decode(d["own"]), Anchor.decode(d["res"]),
                   {k: Decimal(v) for k, v in d["f"].items()}, d["k"], d["l"], d["at"])


def _node_key(source: str, row_id: int) -> bytes:
    return f"n|{source}|{row_id}".encode()


def _children_prefix(source: str, row_id: int) -> bytes:
    return f"c|{source}|{row_id}|".encode()


def _count_key(source: str, row_id: int) -> bytes:
    return f"k|{source}|{row_id}".encode()


def _bucket_key(anchor: Anchor) -> str:
    return f"b|{anchor.owner}|{anchor.month}|{anchor.currency}"


class CustomerValues:
    """The core: :meth:`apply` a row version, :meth:`value` of an account's month."""

    def __init__(self, kv: KeyValue) -> None:
        self.kv = kv

    # ------------------------------------------------------------------ changes

    def apply(self, source: str, row_id: int, position: Position,
              node: Node | None) -> Touched:
        """Fold one version of a row (``node`` None: the row was deleted)."""
        touched = Touched()
        key = _node_key(source, row_id)
        raw = self.kv.get(key)
        old = None if raw is None else _State.decode(raw)
        if old is not None and list(position) <= old.position:
            touched.stale = True
            return touched
        parent = None if node is None else node.parent
        if old is not None and old.parent is not None and old.parent != parent:
            self.kv.delete(_children_prefix(*old.parent) + f"{source}|{row_id}".encode())
            self._count_child(old.parent, -1)
        if parent is not None and (old is None or old.parent != parent):
            self.kv.put(_children_prefix(*parent) + f"{source}|{row_id}".encode(), b"")
            self._count_child(parent, 1)
        own = NOWHERE if node is None else node.own
        state = _State(
            position=list(position), deleted=node is None, parent=parent, own=own,
            resolved=NOWHERE, figures=dict(node.figures) if node else {},
            counted=bool(node and node.counted), link=None if node is None else node.link,
            at=None if old is None else old.at,
        )
        if old is not None:
            self._take_out(source, old, touched)
        state.at = None
        self._settle(source, row_id, state, old, touched)
        if source == "erp.customer":
            self._relink(row_id, None if old is None else old.link, state.link, touched)
        # Named now, while the links are the ones this change was made under.
        touched.values |= self._accounts_of(touched.buckets)
        return touched

    def _resolve(self, state: _State) -> Anchor:
        if state.deleted:
            return NOWHERE
        if state.parent is None:
            return state.own
        raw = self.kv.get(_node_key(*state.parent))
        parent = NOWHERE if raw is None else _State.decode(raw).resolved
        return state.own.over(parent)

    def _settle(self, source: str, row_id: int, state: _State, old: _State | None,
                touched: Touched) -> None:
        """Resolve, put the contribution in, store; move the children if what this row
        hands them changed."""
        state.resolved = self._resolve(state)
        if state.resolved.complete and (state.counted or state.figures):
            state.at = _bucket_key(state.resolved)
            self._bucket_add(state.at, source, state, 1, touched)
        self.kv.put(_node_key(source, row_id), state.encode())
        if old is not None and old.resolved == state.resolved:
            return
        for child_source, child_id in list(self._children(source, row_id)):
            raw = self.kv.get(_node_key(child_source, child_id))
            if raw is None:
                continue
            child = _State.decode(raw)
            before = _State.decode(raw)
            self._take_out(child_source, child, touched)
            child.at = None
            self._settle(child_source, child_id, child, before, touched)

    def _count_child(self, parent: tuple[str, int], step: int) -> None:
        key = _count_key(*parent)
        raw = self.kv.get(key)
        count = (0 if raw is None else int(raw)) + step
        if count:
            self.kv.put(key, str(count).encode())
        else:
            self.kv.delete(key)

    def _children(self, source: str, row_id: int) -> Iterator[tuple[str, int]]:
        # Most rows have no children (or none yet): their count spares the scan, which
        # costs more than a lookup (a batch's pending writes are merged into it).
        if self.kv.get(_count_key(source, row_id)) is None:
            return
        prefix = _children_prefix(source, row_id)
        for key, _ in self.kv.scan(prefix):
            child_source, child_id = key[len(prefix):].decode().rsplit("|", 1)
            yield child_source, int(child_id)

    def _take_out(self, source: str, state: _State, touched: Touched) -> None:
        if state.at is not None:
            self._bucket_add(state.at, source, state, -1, touched)

    def _bucket_add(self, bucket_key: str, source: str, state: _State, sign: int,
                    touched: Touched) -> None:
        key = bucket_key.encode()
        raw = self.kv.get(key)
        bucket = {} if raw is None else decode_bucket(orjson.loads(raw))
        add_to(bucket, source, state.figures, state.counted, sign)
        if bucket:
            self.kv.put(key, orjson.dumps(encode_bucket(bucket)))
        else:
            self.kv.delete(key)
        _, owner, month, currency = bucket_key.split("|")
        touched.buckets.add((owner, month, currency))

    def _relink(self, customer: int, before: int | None, after: int | None,
                touched: Touched) -> None:
        if before == after:
            return
        if before is not None:
            self.kv.delete(f"l|{before}|{customer}".encode())
        if after is not None:
            self.kv.put(f"l|{after}|{customer}".encode(), b"")
        for key, _ in self.kv.scan(f"b|c:{customer}|".encode()):
            _, _, month, currency = key.decode().split("|")
            for account in (before, after):
                if account is not None:
                    touched.values.add((account, month, currency))

    # ------------------------------------------------------------------ reading

    def _accounts_of(self, buckets: set[tuple[str, str, str]]) -> set[ValueKey]:
        """The (account, month, currency) figures the buckets count for."""
        found: set[ValueKey] = set()
        for owner, month, currency in buckets:
            kind, number = owner.split(":")
            if kind == "a":
                found.add((int(number), month, currency))
                continue
            raw = self.kv.get(_node_key("erp.customer", int(number)))
            link = None if raw is None else _State.decode(raw).link
            if link is not None:
                found.add((link, month, currency))
        return found

    def value_keys(self) -> list[ValueKey]:
        """Every (account, month, currency) some bucket counts for (a full scan of the
        buckets: for a first load, not per change)."""
        found: set[ValueKey] = set()
        for key, _ in self.kv.scan(b"b|"):
            _, owner, month, currency = key.decode().split("|")
            found |= self._accounts_of({(owner, month, currency)})
        return sorted(found)

    def linked_customers(self, account: int) -> list[int]:
        prefix = f"l|{account}|".encode()
        return [int(key[len(prefix):]) for key, _ in self.kv.scan(prefix)]

    def _bucket(self, owner: str, month: str, currency: str) -> Bucket:
        raw = self.kv.get(f"b|{owner}|{month}|{currency}".encode())
        return {} if raw is None else decode_bucket(orjson.loads(raw))

    def value(self, account: int, month: str, currency: str) -> CustomerValue | None:
        """The figures of an account's month in a currency (None: nothing there)."""
        theirs = {c: self._bucket(f"c:{c}", month, currency)
                  for c in self.linked_customers(account)}
        bucket = merged([self._bucket(f"a:{account}", month, currency), *theirs.values()])
        if not bucket:
            return None
        return CustomerValue.of(account, month, currency, bucket,
                                [c for c, b in theirs.items() if b])

    def contributions(self, source: str, row_id: int) -> tuple[Anchor, dict[str, Decimal]]:
        """Where one row's contribution sits and what it is (tracing a figure)."""
        raw = self.kv.get(_node_key(source, row_id))
        if raw is None:
            return NOWHERE, {}
        state = _State.decode(raw)
        return (state.resolved, state.figures) if state.at else (NOWHERE, {})
