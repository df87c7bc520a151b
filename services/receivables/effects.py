"""What one fold step (or a netted batch of them) changed, as data for the shell (pure).

The shell turns an :class:`Outcome` into its effects: upserts and tombstones of
``crm_integration.receivable_*`` rows, records on ``ambidex.receivable-position`` and
``ambidex.receivable-discrepancies`` (:mod:`services.receivables.emit`), and the ERP's
expected-receivables plan (``erp_integration.expected_receivable*``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date
from decimal import Decimal

from services.receivables.records import Contract, ContractState
from services.receivables.rules import (
    ContractHeader,
    ContractPosition,
    CustomerPosition,
    Discrepancy,
    InstallmentPosition,
    Kind,
)


@dataclass(frozen=True, slots=True)
class PlanEntry:
    """One row of the ERP's expected-receivables plan: an installment as the CRM has it."""

    contract_id: int
    seq: int
    installment_id: int
    due_date: date
    amount: Decimal
    currency: str
    waived: bool


@dataclass(frozen=True, slots=True)
class PlanHeader:
    """The head of a contract's expected-receivables plan in the ERP."""

    contract_id: int
    status: str
    number: str | None
    account_id: int | None
    currency: str | None
    total: Decimal | None


def plan_header(contract_id: int, header: ContractHeader | None) -> PlanHeader:
    if header is None:
        return PlanHeader(contract_id, plan_status(None), None, None, None, None)
    return PlanHeader(contract_id, plan_status(header), header.number, header.account_id,
                      header.currency, header.total)


def plan_status(header: ContractHeader | None) -> str:
    """The plan's status for finance: a draft is not handed over yet, a terminated
    contract's plan has ended, a deleted contract's is withdrawn."""
    if header is None:
        return "withdrawn"
    return {ContractState.DRAFT: "draft", ContractState.ACTIVE: "active",
            ContractState.COMPLETED: "completed",
            ContractState.TERMINATED: "ended"}[header.state]


@dataclass
class Outcome:
    """What fold steps changed; None values mean "gone" (delete the row).

    :meth:`merge` nets the outcomes of several steps (a source transaction, a batch):
    a discrepancy raised and resolved within them is neither; a position written twice
    is written once. So the shell publishes each cause once per batch, not per change.

    ``discrepancies`` is what to publish and write back, which the policy trims and adds
    to (alerts withheld while the CRM is behind, every open one handed over once it is
    caught up, refused records pruned); ``open_moved`` is what the steps did to the
    state's open discrepancies, which nothing else touches (the gauge follows it)."""

    installments: dict[tuple[int, int], InstallmentPosition | None] = field(default_factory=dict)
    contracts: dict[int, ContractPosition | None] = field(default_factory=dict)
    customers: dict[tuple[int, str], CustomerPosition | None] = field(default_factory=dict)
    plan: dict[tuple[int, int], PlanEntry | None] = field(default_factory=dict)
    plan_headers: dict[int, PlanHeader] = field(default_factory=dict)
    discrepancies: dict[str, tuple[Discrepancy | None, Discrepancy | None]] = field(
        default_factory=dict)
    """Per identity: (before, after) the steps; None = not open."""
    open_moved: dict[Kind, int] = field(default_factory=dict)
    """Per kind: the open discrepancies the steps added to the state (negative: took
    out), netted; only :meth:`note` and :meth:`merge` change it."""
    stale: bool = False
    """The version was not newer than the one folded: nothing moved."""
    rejected: list[str] = field(default_factory=list)
    """Versions that were bad input (dead-letter them), ``"<table> <id>: <reason>"``:
    each row counts as absent and its contract's position says it is incomplete."""

    @property
    def writes_anything(self) -> bool:
        """Anything to publish or write back."""
        return bool(self.contracts or self.installments or self.customers or self.plan
                    or self.plan_headers or self.discrepancies)

    @property
    def raised(self) -> list[Discrepancy]:
        return [a for b, a in self.discrepancies.values() if b is None and a is not None]

    @property
    def changed(self) -> list[Discrepancy]:
        return [a for b, a in self.discrepancies.values() if b is not None and a is not None]

    @property
    def resolved(self) -> list[Discrepancy]:
        return [b for b, a in self.discrepancies.values() if b is not None and a is None]

    def note(self, before: Discrepancy | None, after: Discrepancy | None) -> None:
        """The state's open discrepancy went from ``before`` to ``after``."""
        for d, sign in ((before, -1), (after, 1)):
            if d is not None:
                self._move(d.kind, sign)
        self._net(before, after)

    def _move(self, kind: Kind, n: int) -> None:
        total = self.open_moved.get(kind, 0) + n
        if total:
            self.open_moved[kind] = total
        else:
            self.open_moved.pop(kind, None)

    def _net(self, before: Discrepancy | None, after: Discrepancy | None) -> None:
        identity = (after or before).identity  # type: ignore[union-attr]
        first = self.discrepancies[identity][0] if identity in self.discrepancies else before
        if first == after:
            self.discrepancies.pop(identity, None)
        else:
            self.discrepancies[identity] = (first, after)

    def merge(self, other: Outcome) -> Outcome:
        """This outcome followed by ``other``, netted (``other`` is left as it is)."""
        self.installments.update(other.installments)
        self.contracts.update(other.contracts)
        self.customers.update(other.customers)
        self.plan.update(other.plan)
        self.plan_headers.update(other.plan_headers)
        for before, after in other.discrepancies.values():
            self._net(before, after)
        for kind, moved in other.open_moved.items():
            self._move(kind, moved)
        self.rejected += other.rejected
        self.stale = self.stale and other.stale
        return self


def header_of(contract: Contract | None) -> ContractHeader | None:
    if contract is None:
        return None
    return ContractHeader(contract.number, contract.account_id, contract.state,
                          contract.currency, contract.total)
