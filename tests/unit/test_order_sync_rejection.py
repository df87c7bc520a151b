"""A CRM transaction given up whole is reported per CRM order in business words
(invariant 4: rejected whole and reported): the order's own defect first ("line 2: unit
price is not a number"), else what else in the same change could not be read, else
what the shared holder's policy means for a salesperson (incomplete, too large).
"""

from __future__ import annotations

from dataclasses import replace

from services.order_sync.rejection import describe_defect, rejection_of, rejection_of_given_up
from services.shared.holding import GivenUp, GiveUpCause, TransactionHolder
from tests.unit.test_holding import BOUND, COLLECTIONS
from tests.unit.test_transactions import change, end, undecodable


def test_the_reason_names_the_line_and_the_problem_in_business_words() -> None:
    header = change("30", 1, "sales_order", row_id=30)
    header = replace(header, after={"id": 30, "version": 2})
    line = change("30", 2, "sales_order_line", row_id=301)
    line = replace(line, after={"id": 301, "order_id": 30, "line_no": 1})
    bad = undecodable("30", 3, row={"id": 302, "order_id": 30, "line_no": 2})
    other = change("30", 4, "sales_order_line", row_id=311)
    other = replace(other, after={"id": 311, "order_id": 31, "line_no": 1})
    held: TransactionHolder[str] = TransactionHolder("crm", COLLECTIONS, max_hold=BOUND)
    for n, event in enumerate((header, line, other)):
        held.add_change(event, f"e{n}")
    held.add_marker(end("30", {"crm.sales_order": 1, "crm.sales_order_line": 3}), "end")
    (given_up,) = held.add_undecodable(bad, "bad").given_up

    rejection = rejection_of_given_up(given_up)
    assert rejection.orders[30] == (2, "not synced: line 2: unit price is not a number (NaN)")
    version, reason = rejection.orders[31]
    assert version is None and "line 2: unit price is not a number (NaN)" in reason
    assert "same CRM change" in reason
    assert rejection.accounts == {}


def test_an_account_defect_is_reported_for_the_account() -> None:
    bad = undecodable("40", 1, "account", row={"id": 140, "name": "X"}, column="credit_limit")
    assert describe_defect(bad) == "account 140: credit limit is not a number (NaN)"
    rejection = rejection_of(None, (), (bad,))
    assert rejection.orders == {}
    assert rejection.accounts == {140: "account 140: credit limit is not a number (NaN)"}


def test_a_transaction_given_up_without_a_defect_is_explained_by_its_cause() -> None:
    header = replace(change("41", 1, "sales_order", row_id=41), after={"id": 41, "version": 1})
    for cause, words in (
        (GiveUpCause.INCOMPLETE, "the change could not be read completely from the CRM"),
        (GiveUpCause.INCONSISTENT, "the change could not be read completely from the CRM"),
        (GiveUpCause.OVERFLOW, "the change was too large to sync"),
    ):
        rejection = rejection_of_given_up(GivenUp("crm", "41", cause, "technical", (header,)))
        assert rejection.orders == {41: (1, f"not synced: {words}")}
    unreadable = undecodable("41", 2, column=None, row={"id": 9, "order_id": 41, "line_no": 3})
    assert describe_defect(unreadable) == "line 3: could not be read"
