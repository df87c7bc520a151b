"""production-status's cache of decoded entries: bounded, and it never forgets a value
it was told without saying so.

Invariants (issue 12; DESIGN.md 4: memory does not grow with the history):

* at most twice ``size`` entries are held, however many are kept;
* a cached value (``None`` included: known absent) is handed back as kept, the newest
  one kept for a key wins, and a forgotten or dropped key answers MISSING (read again
  from the state), never a stale value;
* an entry in use stays: reading it from the old generation moves it to the young one.
"""

from __future__ import annotations

import pytest

from services.production_status.decoded import MISSING, Decoded


def test_values_come_back_as_kept_and_none_is_a_value() -> None:
    cache: Decoded[str, int | None] = Decoded(4)
    assert cache.find("a") is MISSING
    cache.keep("a", 1)
    cache.keep("b", None)
    cache.keep("a", 2)
    assert (cache.find("a"), cache.find("b"), cache.find("c")) == (2, None, MISSING)
    cache.forget("a")
    assert cache.find("a") is MISSING


def test_memory_is_bounded_and_the_oldest_unused_go_first() -> None:
    cache: Decoded[int, int] = Decoded(3)
    for n in range(1_000):
        cache.keep(n, n)
        assert len(cache) <= 6
    assert cache.find(0) is MISSING
    assert cache.find(999) == 999


def test_an_entry_in_use_survives_the_turnover() -> None:
    cache: Decoded[int, str] = Decoded(2)
    cache.keep(1, "one")
    cache.keep(2, "two")
    cache.keep(3, "three")  # young full: 1 and 2 are the old generation now
    assert cache.find(1) == "one"  # used: back in the young generation
    cache.keep(4, "four")  # young (3, 1) full: it becomes old, 2 dropped
    assert cache.find(2) is MISSING
    assert (cache.find(1), cache.find(3), cache.find(4)) == ("one", "three", "four")


def test_a_value_kept_again_replaces_the_old_generations_copy() -> None:
    cache: Decoded[int, str] = Decoded(1)
    cache.keep(1, "old")
    cache.keep(2, "x")  # 1 is in the old generation
    cache.keep(1, "new")
    assert cache.find(1) == "new"
    cache.forget(1)
    assert cache.find(1) is MISSING


def test_a_cache_holds_at_least_one_entry() -> None:
    with pytest.raises(ValueError):
        Decoded(0)
