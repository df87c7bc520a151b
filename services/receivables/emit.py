"""What receivables publishes, as Avro records and Kafka keys (pure).

* ``ambidex.receivable-position`` (compacted, ``schemas/published/receivable_position``):
  one record per CRM contract, key = the contract id as decimal text; a tombstone
  (value None) when the contract is gone.
* ``ambidex.receivable-discrepancies`` (alerts, ``schemas/published/receivable_discrepancy``):
  a ``raised`` and later a ``resolved`` event per cause, key = its identity; a cause
  whose figures change while it stays open is not published again (its row in
  ``crm_integration.receivable_discrepancy`` is updated).
"""

from __future__ import annotations

from collections.abc import Collection
from datetime import date, datetime
from typing import Any

from services.receivables.effects import Outcome
from services.receivables.rules import ContractPosition, Discrepancy

POSITION_TOPIC = "ambidex.receivable-position"
DISCREPANCY_TOPIC = "ambidex.receivable-discrepancies"
POSITION_SCHEMA = "receivable_position"
DISCREPANCY_SCHEMA = "receivable_discrepancy"


def position_key(contract_id: int) -> bytes:
    return str(contract_id).encode()


def position_record(position: ContractPosition, as_of: date) -> dict[str, Any]:
    aging = position.aging
    return {
        "contract_id": position.contract_id, "contract_number": position.number,
        "account_id": position.account_id, "state": position.state,
        "currency": position.currency, "contracted": position.contracted,
        "installments": position.installments, "scheduled": position.scheduled,
        "invoiced": position.invoiced, "paid": position.paid,
        "outstanding": position.outstanding, "overdue": position.overdue,
        "overdue_1_30": aging[0], "overdue_31_60": aging[1], "overdue_61_90": aging[2],
        "overdue_over_90": aging[3], "next_due_date": position.next_due_date,
        "next_due_amount": position.next_due_amount, "incomplete": list(position.incomplete),
        "as_of": as_of,
    }


def discrepancy_key(discrepancy: Discrepancy) -> bytes:
    return discrepancy.identity.encode()


def discrepancy_record(discrepancy: Discrepancy, status: str,
                       detected_at: datetime) -> dict[str, Any]:
    d = discrepancy
    return {
        "discrepancy_id": d.identity, "status": status, "kind": d.kind.value,
        "reason": d.reason, "currency": d.currency, "crm_amount": d.crm_amount,
        "erp_amount": d.erp_amount, "contract_id": d.contract_id,
        "installment_seq": d.installment_seq, "crm_installment_id": d.crm_installment_id,
        "erp_invoice_ids": list(d.erp_invoice_ids), "erp_payment_ids": list(d.erp_payment_ids),
        "erp_customer_id": d.erp_customer_id, "due_date": d.due_date,
        "detected_at": detected_at,
    }


def alerts(outcome: Outcome, shown: Collection[str],
           detected_at: datetime) -> list[tuple[bytes, dict[str, Any]]]:
    """The discrepancy events of a (netted) outcome, resolved before raised: ``resolved``
    only for a cause ``shown`` open (the identities the integration table has open),
    ``raised`` only for one it does not (a cause raised, or changed while its raise was
    withheld), so a redone batch or a replay raises an open cause once."""
    events = [(discrepancy_key(d), discrepancy_record(d, "resolved", detected_at))
              for d in outcome.resolved if d.identity in shown]
    events += [(discrepancy_key(d), discrepancy_record(d, "raised", detected_at))
               for d in outcome.raised + outcome.changed if d.identity not in shown]
    return events


def positions(outcome: Outcome, as_of: date) -> list[tuple[bytes, dict[str, Any] | None]]:
    """The position records of an outcome (None: tombstone), by contract id."""
    return [(position_key(cid), None if p is None else position_record(p, as_of))
            for cid, p in sorted(outcome.contracts.items())]
