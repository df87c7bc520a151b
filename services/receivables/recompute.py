"""Every receivables figure recomputed from the two databases' rows (pure).

``ambidex reconcile receivables`` reads ``crm.contract``, ``crm.installment``,
``erp.invoice`` and ``erp.payment``, hands the rows to :func:`recompute` and compares
the result with what the service wrote. The same rules as the fold
(:mod:`services.receivables.rules`), walked naively over all rows: this is also the
specification the incremental fold is tested against.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import date
from decimal import Decimal
from typing import Any

from services.receivables.effects import PlanEntry, PlanHeader, header_of, plan_header
from services.receivables.records import (
    ZERO,
    BadRow,
    Contract,
    Installment,
    Invoice,
    Payment,
    Table,
    parse,
)
from services.receivables.rules import (
    EMPTY,
    BilledInvoice,
    ContractPosition,
    CustomerPosition,
    Discrepancy,
    InstallmentPosition,
    InvoiceFacts,
    PlannedInstallment,
    Rules,
    SlotFacts,
    Sums,
    contract_discrepancies,
    contract_position,
    customer_contribution,
    customer_position,
    installment_position,
    invoice_discrepancies,
    payment_discrepancy,
    slot_discrepancies,
    slot_sums,
    slot_sums_as_of,
)


@dataclass
class Recomputed:
    installments: dict[tuple[int, int], InstallmentPosition] = field(default_factory=dict)
    contracts: dict[int, ContractPosition] = field(default_factory=dict)
    customers: dict[tuple[int, str], CustomerPosition] = field(default_factory=dict)
    discrepancies: dict[str, Discrepancy] = field(default_factory=dict)
    plan: dict[tuple[int, int], PlanEntry] = field(default_factory=dict)
    plan_headers: dict[int, PlanHeader] = field(default_factory=dict)
    rejected: list[str] = field(default_factory=list)
    """Rows that are bad input, ``"<table> <id>: <reason>"``."""


def _add(table: dict[str, Sums], sums: Mapping[str, Sums]) -> None:
    for currency, s in sums.items():
        table[currency] = table.get(currency, EMPTY).plus(s)


def recompute(rows: Mapping[Table, Iterable[Mapping[str, Any]]], as_of: date,
              rules: Rules | None = None) -> Recomputed:
    """Positions, plan and open discrepancies from the current rows of the four tables."""
    rules = rules or Rules()
    result = Recomputed()
    records: dict[Table, dict[int, Any]] = {t: {} for t in Table}
    bad: dict[Table, list[tuple[int, Mapping[str, Any], str]]] = {t: [] for t in Table}
    for table in Table:
        for row in rows.get(table, ()):
            try:
                record = parse(table, row)
            except BadRow as error:
                row_id = row.get("id")
                reason = f"{table.value} {row_id}: {error.reason}"
                result.rejected.append(reason)
                bad[table].append((int(row_id) if isinstance(row_id, int) else 0, row, reason))
                continue
            assert record is not None
            records[table][record.id] = record
    contracts: dict[int, Contract] = records[Table.CONTRACT]
    invoices: dict[int, Invoice] = records[Table.INVOICE]
    payments: dict[int, Payment] = records[Table.PAYMENT]
    incomplete: dict[int, list[str]] = {}
    for table, entries in bad.items():
        column = {Table.CONTRACT: "id", Table.INSTALLMENT: "contract_id",
                  Table.INVOICE: "crm_contract_id", Table.PAYMENT: "invoice_id"}[table]
        for _, row, reason in entries:
            value = row.get(column)
            if not isinstance(value, int) or isinstance(value, bool):
                continue
            if table is Table.PAYMENT:
                invoice = invoices.get(value)
                if invoice is None or invoice.contract_id is None:
                    continue
                value = invoice.contract_id
            incomplete.setdefault(value, []).append(reason)

    # the posted payments of each invoice
    paid_by_invoice: dict[int, list[Payment]] = {}
    for payment in sorted(payments.values(), key=lambda p: p.id):
        if payment.posted and payment.invoice_id is not None:
            paid_by_invoice.setdefault(payment.invoice_id, []).append(payment)
        elif payment.posted:
            d = payment_discrepancy(payment.id, payment.customer_id, payment.reference,
                                    payment.currency, payment.amount)
            result.discrepancies[d.identity] = d

    # the slots
    planned: dict[tuple[int, int], list[PlannedInstallment]] = {}
    inst: Installment
    for inst in sorted(records[Table.INSTALLMENT].values(), key=lambda i: i.id):
        planned.setdefault((inst.contract_id, inst.seq), []).append(PlannedInstallment(
            inst.id, inst.due_date, inst.amount, inst.currency, inst.waived))
    billed: dict[tuple[int, int], list[BilledInvoice]] = {}
    for invoice in sorted(invoices.values(), key=lambda i: i.id):
        if invoice.contract_id is None or invoice.seq is None:
            continue
        got = paid_by_invoice.get(invoice.id, [])
        paid: dict[str, Decimal] = {}
        for p in got:
            paid[p.currency] = paid.get(p.currency, ZERO) + p.amount
        days = [p.paid_on for p in got if p.paid_on is not None]
        billed.setdefault((invoice.contract_id, invoice.seq), []).append(BilledInvoice(
            invoice.id, invoice.currency, invoice.total, invoice.billed,
            invoice.state == "cancelled", tuple(sorted(paid.items())),
            max(days) if days else None))
        facts = InvoiceFacts(invoice.id, invoice.contract_id, invoice.seq, invoice.customer_id,
                             invoice.state.value, invoice.currency, invoice.total,
                             invoice.due_date,
                             tuple((p.id, p.currency, p.amount) for p in got))
        for d in invoice_discrepancies(facts, as_of, rules):
            result.discrepancies[d.identity] = d

    sums: dict[int, dict[str, Sums]] = {}
    next_due: dict[int, dict[str, dict[date, Decimal]]] = {}
    for key in sorted(set(planned) | set(billed)):
        contract_id, seq = key
        slot = SlotFacts(tuple(planned.get(key, ())), tuple(billed.get(key, ())))
        _add(sums.setdefault(contract_id, {}), slot_sums_as_of(slot, as_of))
        position = installment_position(contract_id, seq, slot, as_of)
        if position is not None:
            result.installments[key] = position
        installment = slot.installment
        if installment is not None:
            result.plan[key] = PlanEntry(contract_id, seq, installment.id, installment.due_date,
                                         installment.amount, installment.currency,
                                         installment.waived)
            outstanding = slot_sums(slot).get(installment.currency, EMPTY).outstanding
            if outstanding and installment.due_date >= as_of:
                dated = next_due.setdefault(contract_id, {}).setdefault(installment.currency, {})
                dated[installment.due_date] = dated.get(installment.due_date, ZERO) + outstanding
        header = header_of(contracts.get(contract_id))
        for d in slot_discrepancies(contract_id, seq, slot, header, as_of, rules):
            result.discrepancies[d.identity] = d

    customers: dict[tuple[int, str], tuple[Sums, Decimal, dict[date, Decimal]]] = {}
    for contract_id in sorted(set(contracts) | set(sums)):
        header = header_of(contracts.get(contract_id))
        own = sums.get(contract_id, {})
        for d in contract_discrepancies(contract_id, header, own):
            result.discrepancies[d.identity] = d
        if header is None:
            continue
        result.plan_headers[contract_id] = plan_header(contract_id, header)
        dated = next_due.get(contract_id, {}).get(header.currency, {})
        first = min(dated) if dated else None
        contract_pos = contract_position(
            contract_id, header, own.get(header.currency, EMPTY),
            None if first is None else (first, dated[first]), incomplete.get(contract_id, ()))
        result.contracts[contract_id] = contract_pos
        key2 = (header.account_id, header.currency)
        totals, contracted, dues = customers.get(key2, (EMPTY, ZERO, {}))
        if contract_pos.next_due_date is not None and contract_pos.next_due_amount is not None:
            dues[contract_pos.next_due_date] = (dues.get(contract_pos.next_due_date, ZERO)
                                            + contract_pos.next_due_amount)
        customers[key2] = (totals.plus(customer_contribution(contract_pos)),
                           contracted + contract_pos.contracted, dues)
    for (account_id, currency), (totals, contracted, dues) in sorted(customers.items()):
        first = min(dues) if dues else None
        customer = customer_position(account_id, currency, totals, contracted,
                                     None if first is None else (first, dues[first]))
        if customer is not None:
            result.customers[(account_id, currency)] = customer
    return result
