"""receivables against the real stack (Debezium -> Kafka -> service -> CRM and ERP).

Invariants shown here, each on a fresh CRM account, ERP customer and contract:

* A contract signed with its installment plan in the CRM, invoiced and paid in the ERP,
  ends up in ``crm_integration.receivable_position`` / ``_installment`` /
  ``_customer``, in the ERP's expected-receivables plan and on the compacted
  ``ambidex.receivable-position`` topic with exact Decimal figures, and equals the
  reconcile recomputation.
* Each discrepancy kind shown (installment not invoiced, invoice amount mismatch,
  installments not adding up to the total, payment over, payment without invoice) is
  raised once with both sides' figures and resolved once when the cause is fixed, and
  the CRM table has none of them open at the end.
* A source transaction with a bad row (a NaN payment amount, the ``*_finite`` check
  dropped as in a database that predates it) goes whole to ``dlq.receivables`` with
  the reason; nothing of it is applied, the contract's position says it is incomplete
  and why, and the service goes on.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

import asyncpg
import pytest

from ambidex.stack.local import StackAddresses
from services.receivables.emit import DISCREPANCY_TOPIC, POSITION_TOPIC
from services.receivables.reconcile_cli import reconcile_once
from services.receivables.tables import RowDifference
from services.shared.deadletter_tools import read_dead_letters
from tests.conftest import ServiceProcess, wait_until
from tests.integration.support import metric, read_topic

pytestmark = pytest.mark.integration

SERVICE = "receivables"
GROUP = "ambidex-receivables.changes"


def today() -> date:
    """The as-of date the service reaches: the databases' time, as a UTC date."""
    return datetime.now(UTC).date()


@dataclass(frozen=True)
class Party:
    """A fresh CRM account and its ERP customer."""

    account_id: int
    customer_id: int


async def new_party(crm: asyncpg.Connection, erp: asyncpg.Connection, tag: str) -> Party:
    account = await crm.fetchval(
        """INSERT INTO crm.account (name, country_code, currency_code)
           VALUES ($1, 'DE', 'EUR') RETURNING id""", f"Receivables {tag}")
    customer = await erp.fetchval(
        """INSERT INTO erp.customer (name, currency_code, crm_account_id)
           VALUES ($1, 'EUR', $2) RETURNING id""", f"Receivables {tag}", account)
    return Party(account, customer)


async def sign(crm: asyncpg.Connection, party: Party, total: str,
               plan: list[tuple[date, str]]) -> int:
    """An active contract and its installment plan, in one CRM transaction."""
    async with crm.transaction():
        contract = await crm.fetchval(
            """INSERT INTO crm.contract (account_id, state, currency_code, total_amount,
                                         start_date)
               VALUES ($1, 'active', 'EUR', $2, $3) RETURNING id""",
            party.account_id, Decimal(total), today() - timedelta(days=60))
        for seq, (due, amount) in enumerate(plan, start=1):
            await crm.execute(
                """INSERT INTO crm.installment (contract_id, seq, due_date, amount,
                                                currency_code)
                   VALUES ($1, $2, $3, $4, 'EUR')""", contract, seq, due, Decimal(amount))
    return int(contract)


async def bill(erp: asyncpg.Connection, party: Party, contract: int, seq: int,
               amount: str, due: date | None = None) -> int:
    """A posted ERP invoice of one installment."""
    return int(await erp.fetchval(
        """INSERT INTO erp.invoice (customer_id, crm_contract_id, installment_seq, state,
                                    currency_code, amount_untaxed, amount_total,
                                    amount_residual, due_date)
           VALUES ($1, $2, $3, 'posted', 'EUR', $4, $4, $4, $5) RETURNING id""",
        party.customer_id, contract, seq, Decimal(amount), due))


async def pay(erp: asyncpg.Connection, party: Party, invoice: int | None, amount: str) -> int:
    return int(await erp.fetchval(
        """INSERT INTO erp.payment (customer_id, invoice_id, amount, currency_code, paid_at)
           VALUES ($1, $2, $3, 'EUR', now()) RETURNING id""",
        party.customer_id, invoice, Decimal(amount)))


async def row(crm: asyncpg.Connection, table: str, where: str, *args: Any) -> dict[str, Any] | None:
    found = await crm.fetchrow(
        f"SELECT * FROM crm_integration.{table} WHERE {where} AND NOT deleted", *args)
    return None if found is None else dict(found)


async def until_row(crm: asyncpg.Connection, table: str, where: str, *args: Any,
                    check: Callable[[dict[str, Any]], bool] = bool,
                    timeout: float = 90.0) -> dict[str, Any]:
    """Wait until the live row satisfies ``check``; the row."""
    seen: list[dict[str, Any] | None] = [None]

    async def ready() -> bool:
        seen[0] = await row(crm, table, where, *args)
        return seen[0] is not None and check(seen[0])

    try:
        await wait_until(ready, timeout=timeout, interval=0.5)
    except AssertionError:
        raise AssertionError(f"{table} {where} {args}: last {seen[0]}") from None
    assert seen[0] is not None
    return seen[0]


async def reconciled(stack: StackAddresses, contracts: set[int], accounts: set[int]) -> None:
    """Wait until the reconcile recomputation finds no difference for these contracts."""
    last: list[list[RowDifference]] = [[]]

    async def agree() -> bool:
        _, last[0] = await reconcile_once(stack.crm_admin_dsn, stack.erp_admin_dsn,
                                          contracts=contracts, accounts=accounts)
        return not last[0]

    try:
        await wait_until(agree, timeout=120, interval=1.0)
    except AssertionError:
        raise AssertionError("differs from the recomputation:\n" + "\n".join(map(str, last[0][:20]))
                             ) from None


def money(value: str) -> Decimal:
    return Decimal(value)


async def test_a_signed_contract_invoiced_and_paid_shows_exact_figures(
    receivables: ServiceProcess, stack: StackAddresses, dbs: Any, unique: str
) -> None:
    crm, erp = dbs
    party = await new_party(crm, erp, unique)
    day = today()
    contract = await sign(crm, party, "1200.00", [(day - timedelta(days=40), "400.00"),
                                                  (day - timedelta(days=10), "400.00"),
                                                  (day + timedelta(days=20), "400.00")])
    first = await bill(erp, party, contract, 1, "400.00")
    second = await bill(erp, party, contract, 2, "400.00")
    await pay(erp, party, first, "400.00")
    await pay(erp, party, second, "100.25")
    await pay(erp, party, second, "50.25")  # several payments of one invoice

    position = await until_row(crm, "receivable_position", "contract_id = $1", contract,
                               check=lambda r: r["paid"] == money("550.50"))
    assert (position["contracted"], position["scheduled"], position["invoiced"],
            position["outstanding"], position["overdue"]) == (
        money("1200.00"), money("1200.00"), money("800.00"), money("649.50"), money("249.50"))
    assert position["overdue_1_30"] == money("249.50")  # the second, 10 days past due
    assert (position["next_due_date"], position["next_due_amount"]) == (
        day + timedelta(days=20), money("400.00"))
    second_row = await row(crm, "receivable_installment", "contract_id = $1 AND seq = 2",
                           contract)
    assert second_row is not None
    assert (second_row["paid"], second_row["outstanding"], second_row["aging_bucket"]) == (
        money("150.50"), money("249.50"), "0-30")
    customer = await until_row(crm, "receivable_customer",
                               "account_id = $1 AND currency_code = 'EUR'", party.account_id,
                               check=lambda r: r["paid"] == money("550.50"))
    assert (customer["contracts"], customer["outstanding"]) == (1, money("649.50"))
    plan = await erp.fetch(
        """SELECT installment_seq, amount FROM erp_integration.expected_receivable
           WHERE crm_contract_id = $1 AND NOT deleted ORDER BY installment_seq""", contract)
    assert [(r["installment_seq"], r["amount"]) for r in plan] == [
        (1, money("400.00")), (2, money("400.00")), (3, money("400.00"))]

    async def published() -> bool:
        found = await read_topic(stack.kafka_bootstrap, POSITION_TOPIC,
                                 lambda k: k == str(contract).encode())
        return bool(found) and found[-1][1] is not None and \
            found[-1][1]["paid"] == money("550.50")

    await wait_until(published, timeout=60, interval=1.0)
    found = await read_topic(stack.kafka_bootstrap, POSITION_TOPIC,
                             lambda k: k == str(contract).encode())
    record = found[-1][1]
    assert (record["outstanding"], record["currency"]) == (money("649.50"), "EUR")
    await reconciled(stack, {contract}, {party.account_id})


async def test_each_discrepancy_is_raised_once_and_resolved_once(
    receivables: ServiceProcess, stack: StackAddresses, dbs: Any, unique: str
) -> None:
    crm, erp = dbs
    party = await new_party(crm, erp, unique)
    day = today()
    # contract total 1,300 but the plan adds up to 1,200; installment 2 (10 days past
    # due, beyond the 5 days' grace) is never invoiced; invoice 1 bills 390 of 400
    contract = await sign(crm, party, "1300.00", [(day - timedelta(days=40), "400.00"),
                                                  (day - timedelta(days=10), "400.00"),
                                                  (day + timedelta(days=20), "400.00")])
    first = await bill(erp, party, contract, 1, "390.00")
    over = await pay(erp, party, first, "450.00")  # paid more than invoiced
    loose = await pay(erp, party, None, "12.00")   # names no invoice
    expected = {
        f"installments_total_mismatch/contract={contract}",
        f"installment_not_invoiced/contract={contract}/seq=2",
        f"invoice_amount_mismatch/contract={contract}/seq=1",
        f"payment_over/invoice={first}",
        f"payment_without_invoice/payment={loose}",
    }

    async def open_ids() -> set[str]:
        rows = await crm.fetch(
            """SELECT discrepancy_id FROM crm_integration.receivable_discrepancy
               WHERE discrepancy_id = ANY($1::text[]) AND NOT deleted""", sorted(expected))
        return {r["discrepancy_id"] for r in rows}

    async def all_open() -> bool:
        return await open_ids() == expected

    await wait_until(all_open, timeout=90, interval=0.5)
    mismatch = await row(crm, "receivable_discrepancy", "discrepancy_id = $1",
                         f"invoice_amount_mismatch/contract={contract}/seq=1")
    assert mismatch is not None
    assert (mismatch["crm_amount"], mismatch["erp_amount"]) == (money("400.00"),
                                                                  money("390.00"))
    # every cause fixed
    await crm.execute("UPDATE crm.contract SET total_amount = 1200 WHERE id = $1", contract)
    await bill(erp, party, contract, 2, "400.00")
    await erp.execute("""UPDATE erp.invoice SET amount_untaxed = 400, amount_total = 400,
                         amount_residual = 400 WHERE id = $1""", first)
    await erp.execute("UPDATE erp.payment SET state = 'cancelled' WHERE id = $1", over)
    await pay(erp, party, first, "400.00")
    await erp.execute("UPDATE erp.payment SET state = 'cancelled' WHERE id = $1", loose)

    async def none_open() -> bool:
        return await open_ids() == set()

    await wait_until(none_open, timeout=90, interval=0.5)
    events: list[tuple[str, str]] = []

    async def each_resolved() -> bool:
        found = await read_topic(stack.kafka_bootstrap, DISCREPANCY_TOPIC,
                                 lambda k: k is not None and k.decode() in expected)
        events[:] = [(k.decode(), v["status"]) for k, v in found if k is not None and v]
        return {i for i, s in events if s == "resolved"} == expected

    await wait_until(each_resolved, timeout=60, interval=1.0)
    counts = Counter(events)
    assert counts == Counter({(i, s): 1 for i in expected for s in ("raised", "resolved")})
    await reconciled(stack, {contract}, {party.account_id})


async def test_a_transaction_with_a_nan_amount_goes_whole_to_the_dead_letters(
    receivables: ServiceProcess, stack: StackAddresses, dbs: Any, unique: str
) -> None:
    crm, erp = dbs
    party = await new_party(crm, erp, unique)
    day = today()
    contract = await sign(crm, party, "100.00", [(day + timedelta(days=30), "100.00")])
    invoice = await bill(erp, party, contract, 1, "100.00")
    await until_row(crm, "receivable_position", "contract_id = $1", contract,
                    check=lambda r: r["invoiced"] == money("100.00"))
    finite = "payment_amount_finite"
    await erp.execute(f"ALTER TABLE erp.payment DROP CONSTRAINT {finite}")
    try:
        async with erp.transaction():  # a readable payment and a NaN one, together
            good = await pay(erp, party, invoice, "30.00")
            bad = await erp.fetchval(
                """INSERT INTO erp.payment (customer_id, invoice_id, amount, currency_code)
                   VALUES ($1, $2, 'NaN', 'EUR') RETURNING id""", party.customer_id, invoice)
    finally:
        await erp.execute("DELETE FROM erp.payment WHERE amount = 'NaN'")
        await erp.execute(
            f"ALTER TABLE erp.payment ADD CONSTRAINT {finite} CHECK (amount NOT IN "
            "('NaN'::numeric, 'Infinity'::numeric, '-Infinity'::numeric))")
    letters: dict[int, str] = {}

    async def both_dead_lettered() -> bool:
        letters.clear()
        async for _, letter in read_dead_letters(stack.kafka_bootstrap, SERVICE, limit=None,
                                                 idle_timeout_s=5.0):
            if letter.source_topic == "cdc.erp.payment" and letter.key is not None:
                row_id = json.loads(letter.key).get("id")
                if row_id in (good, bad):
                    letters[row_id] = letter.reason
        return len(letters) == 2

    await wait_until(both_dead_lettered, timeout=90, interval=1.0)
    assert all("rejected whole" in reason or "given up" in reason
               for reason in letters.values()), letters
    assert await metric(receivables, "ambidex_rejected_transactions_total") >= 1
    # nothing of it applied, and the service goes on with the next payment
    await pay(erp, party, invoice, "20.00")
    position = await until_row(crm, "receivable_position", "contract_id = $1", contract,
                               check=lambda r: r["paid"] != money("0.00"))
    assert position["paid"] == money("20.00")
    # and its position says it is incomplete, naming the rows and why
    incomplete = " ".join(json.loads(position["incomplete"]))
    assert f"erp.payment {good}:" in incomplete and f"erp.payment {bad}:" in incomplete
