"""Decoded state entries kept between changes, a bounded number (pure, no I/O).

A change of production-status reads the rows around it (its own row's previous version,
its production order or shipment, its order's header, figures and identity), and the
next changes of the same order read most of them again: decoding each from the state
at every read was most of a replay's time (issue 12). :class:`Decoded` keeps the
decoded values the fold read or wrote, *write-through*: the fold still writes every
change to the state at once (the state stays the truth; a fold reloaded from it after
a failed batch starts with an empty cache), and records the same value here.

Memory is bounded whatever the history: two generations of at most ``size`` entries
each; when the young one is full it becomes the old one and the previous old one is
dropped. A value read from the old generation moves back to the young one, so what a
replay keeps using stays (an approximate least-recently-used order, at the cost of a
dict lookup).
"""

from __future__ import annotations

from enum import Enum
from typing import Final, Generic, Literal, TypeVar

K = TypeVar("K")
V = TypeVar("V")


class _Missing(Enum):
    """Not cached (``None`` is a value: the entry is known to be absent)."""

    MISSING = 0


MISSING: Final = _Missing.MISSING


class Decoded(Generic[K, V]):
    """See the module docstring. A value handed out is shared: its owner may change it
    in place only to write it back (:meth:`keep`) at once."""

    __slots__ = ("_old", "_young", "size")

    def __init__(self, size: int) -> None:
        if size < 1:
            raise ValueError("a cache of at least one entry")
        self.size = size
        self._young: dict[K, V] = {}
        self._old: dict[K, V] = {}

    def find(self, key: K) -> V | Literal[_Missing.MISSING]:
        """The cached value, or :data:`MISSING`."""
        value = self._young.get(key, MISSING)
        if value is not MISSING or not self._old:
            return value
        value = self._old.pop(key, MISSING)
        if value is not MISSING:
            self.keep(key, value)
        return value

    def keep(self, key: K, value: V) -> None:
        young = self._young
        if key not in young and len(young) >= self.size:
            self._old, self._young = young, {}
            young = self._young
        self._old.pop(key, None)
        young[key] = value

    def forget(self, key: K) -> None:
        self._young.pop(key, None)
        self._old.pop(key, None)

    def __len__(self) -> int:
        return len(self._young) + len(self._old)


__all__ = ["MISSING", "Decoded"]
