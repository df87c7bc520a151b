"""Invariant: the workload's business activity is a pure function of its seed.

The same seed always asks for the same sequence of operations and the same per-op
parameters (whatever the interleaving of workers), different seeds differ, and the
mix follows the declared weights, covering every operation kind on both sides and
every source table of receivables and production-status.
"""

from __future__ import annotations

from collections import Counter

import pytest

from ambidex.workload.plan import (
    CRM_OPERATIONS,
    WEIGHTS,
    OperationKind,
    operation_rng,
    plan_operations,
)
from ambidex.workload.runner import OPERATIONS


def test_same_seed_same_plan() -> None:
    assert plan_operations(42, 500) == plan_operations(42, 500)


def test_plan_is_a_prefix_of_a_longer_plan() -> None:
    assert plan_operations(7, 1000)[:300] == plan_operations(7, 300)


def test_different_seeds_differ() -> None:
    assert plan_operations(1, 200) != plan_operations(2, 200)


def test_operation_parameters_depend_only_on_seed_and_index() -> None:
    first = [operation_rng(3, i).random() for i in range(50)]
    again = [operation_rng(3, i).random() for i in reversed(range(50))][::-1]
    assert first == again
    assert first != [operation_rng(4, i).random() for i in range(50)]


def test_mix_follows_weights() -> None:
    count = 40_000
    mix = Counter(plan_operations(11, count))
    total_weight = sum(WEIGHTS.values())
    for kind, weight in WEIGHTS.items():
        expected = count * weight / total_weight
        assert abs(mix[kind] - expected) < 5 * expected**0.5 + 5, kind


def test_every_kind_is_planned_and_implemented() -> None:
    assert set(WEIGHTS) == set(OperationKind)
    assert set(OPERATIONS) == set(OperationKind)
    assert set(plan_operations(5, 5000)) == set(OperationKind)


def test_both_sides_are_exercised() -> None:
    sides = Counter(kind.side for kind in plan_operations(9, 2000))
    assert sides["crm"] > 500 and sides["erp"] > 500
    assert OperationKind.SHIP_ORDER not in CRM_OPERATIONS
    assert OperationKind.ACCEPT_QUOTE.side == "crm"


def test_negative_count_is_rejected() -> None:
    with pytest.raises(ValueError):
        plan_operations(1, -1)


def test_receivables_and_production_status_sources_are_planned() -> None:
    """Every source row receivables and production-status read is written by some
    operation, often enough to show in a short run, and billing keeps up with signing."""
    mix = Counter(plan_operations(13, 20_000))
    for kind in (
        OperationKind.SIGN_CONTRACT,
        OperationKind.AMEND_CONTRACT,
        OperationKind.INVOICE_INSTALLMENT,
        OperationKind.REGISTER_PAYMENT,
        OperationKind.CANCEL_INVOICE,
        OperationKind.PLAN_PRODUCTION,
        OperationKind.INSPECT_QUALITY,
        OperationKind.SHIP_ORDER,
        OperationKind.DISPATCH_SHIPMENT,
        OperationKind.CONFIRM_DELIVERY,
        OperationKind.HANDLE_SERVICE_CASE,
        OperationKind.HANDLE_RETURN,
    ):
        assert mix[kind] > 100, kind
    assert WEIGHTS[OperationKind.INVOICE_INSTALLMENT] >= WEIGHTS[OperationKind.SIGN_CONTRACT]
    assert OperationKind.AMEND_CONTRACT.side == "crm"
    assert OperationKind.DISPATCH_SHIPMENT.side == "erp"
    assert OperationKind.CANCEL_INVOICE.side == "erp"


def test_a_pool_kept_only_in_memory_stays_bounded() -> None:
    from ambidex.workload.world import IdPool

    pool = IdPool()
    for item in range(1, 2000):
        pool.add_bounded(item, 500)
    assert len(pool) == 500 and set(pool) == set(range(1, 501))
    pool.discard(7)
    pool.add_bounded(9999, 500)
    assert 9999 in pool and len(pool) == 500
