"""receivables: moving the as-of date gives the event loop back between what it ages.

Invariant (issue 11): a new as-of date can age every listed installment (a replay's
first date: all of them), so :meth:`Receivables.advancing` yields between the due dates
and the figures it moves and while it reads the calendar for them — the runner pauses
there once a slice is used — and ends with the same outcome and state as the unpaused
:meth:`Receivables.advance`. Counted in pause points, never timed.
"""

from __future__ import annotations

from datetime import timedelta

import pytest

from services.receivables import fold
from services.receivables.effects import Outcome
from tests.unit.test_receivables_rules import START, World, _plan

CONTRACTS = 30


def _world() -> World:
    w = World()
    w.advance(START)
    for cid in range(1, CONTRACTS + 1):
        _plan(w, cid)  # three installments each, none invoiced
    return w


def test_moving_the_as_of_date_pauses_between_the_installments_it_ages() -> None:
    paused, plain = _world(), _world()
    later = START + timedelta(days=400)
    work = paused.fold.advancing(later)
    pauses = 0
    while True:
        try:
            next(work)
        except StopIteration as done:
            out: Outcome = done.value
            break
        pauses += 1
    assert pauses >= 3 * CONTRACTS
    assert out == plain.advance(later)
    assert out.installments and out.raised
    assert paused.fold.installment_positions() == plain.fold.installment_positions()
    assert paused.fold.open_discrepancies() == plain.fold.open_discrepancies()
    assert paused.fold.as_of == plain.fold.as_of == later


def _pauses(w: World) -> int:
    work = w.fold.advancing(START + timedelta(days=400))
    pauses = 0
    while True:
        try:
            next(work)
        except StopIteration:
            return pauses
        pauses += 1


def test_reading_the_calendar_pauses_too(monkeypatch: pytest.MonkeyPatch) -> None:
    """Five crossings read each of the 3 x CONTRACTS calendar entries once each."""
    plain = _pauses(_world())
    monkeypatch.setattr(fold, "SCAN_SLICE", 1)
    assert _pauses(_world()) >= plain + 5 * 3 * CONTRACTS
