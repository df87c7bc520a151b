"""customer-value's dashboard in a real browser against the real stack: headless
Chromium (Debian's) loads the pages the service process serves on its own port, and
every figure shown for a fresh account — its months, its totals, its row in the
revenue ranking — equals ``crm_integration.customer_value``'s; the account's name
(with markup in it) shows as text and runs nothing; the charts are drawn; a screenshot
of each page is saved under the test's tmp path."""

from __future__ import annotations

import os
from collections import defaultdict
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

from tests.browser import headless_chromium, missing
from tests.conftest import ServiceProcess, wait_until
from tests.integration.conftest import Dbs

pytestmark = pytest.mark.integration
D = Decimal
SHOWN = ("revenue_booked", "cost_to_serve", "margin", "invoiced", "collected", "outstanding")


@pytest.fixture
def browser() -> Iterator[Any]:
    why = missing()
    if why is not None:
        if os.environ.get("CI"):
            pytest.fail(why)
        pytest.skip(why)
    driver = headless_chromium(1280, 1800)
    try:
        yield driver
    finally:
        driver.quit()


async def new_account(crm: asyncpg.Connection, erp: asyncpg.Connection, name: str
                      ) -> tuple[int, int]:
    account = int(await crm.fetchval(
        """INSERT INTO crm.account (name, country_code, currency_code)
           VALUES ($1, 'DE', 'EUR') RETURNING id""", name))
    customer = int(await erp.fetchval(
        """INSERT INTO erp.customer (name, currency_code, crm_account_id)
           VALUES ($1, 'EUR', $2) RETURNING id""", f"dashboard {account}", account))
    return account, customer


async def make_rows(crm: asyncpg.Connection, erp: asyncpg.Connection, account: int,
                    customer: int) -> None:
    """Revenue in two months (one this month, one 40 days ago) and, this month, a
    shipment with freight and goods at cost: a trend of two points and a cost."""
    for amount, days_ago in (("1000.00", 0), ("400.00", 40)):
        await crm.execute(
            """INSERT INTO crm.sales_order (account_id, state, currency_code, amount_total,
                   confirmed_at) VALUES ($1, 'confirmed', 'EUR', $2,
                   now() - make_interval(days => $3))""", account, D(amount), days_ago)
    item = int(await erp.fetchval("SELECT min(id) FROM erp.item WHERE active"))
    warehouse = int(await erp.fetchval("SELECT min(id) FROM erp.warehouse"))
    async with erp.transaction():
        order = int(await erp.fetchval(
            """INSERT INTO erp.sales_order (customer_id, state, currency_code, warehouse_id,
                   amount_total) VALUES ($1, 'open', 'EUR', $2, 500) RETURNING id""",
            customer, warehouse))
        line = int(await erp.fetchval(
            """INSERT INTO erp.sales_order_line (order_id, line_no, item_id, quantity,
                   unit_price) VALUES ($1, 1, $2, 10, 50) RETURNING id""", order, item))
    async with erp.transaction():
        shipment = int(await erp.fetchval(
            """INSERT INTO erp.shipment (sales_order_id, warehouse_id, state, shipped_at,
                   carrier, freight_cost, freight_currency_code)
               VALUES ($1, $2, 'shipped', now(), 'DHL', 30.00, 'EUR') RETURNING id""",
            order, warehouse))
        await erp.execute(
            """INSERT INTO erp.shipment_line (shipment_id, sales_order_line_id, item_id,
                   quantity, unit_cost, cost_currency_code)
               VALUES ($1, $2, $3, 5, 50.00, 'EUR')""", shipment, line, item)


async def database_figures(crm: asyncpg.Connection, account: int
                           ) -> dict[tuple[str, str, str], str]:
    """(currency, month, figure) -> value of the account's live rows, and per currency
    (month '') the sums over its months."""
    rows = await crm.fetch("SELECT * FROM crm_integration.customer_value "
                           "WHERE account_id = $1 AND NOT deleted", account)
    out: dict[tuple[str, str, str], str] = {}
    totals: dict[tuple[str, str], Decimal] = defaultdict(Decimal)
    for row in rows:
        currency = row["currency_code"].strip()
        for name in SHOWN:
            out[(currency, f"{row['month']:%Y-%m}", name)] = str(row[name])
            totals[(currency, name)] += row[name]
    out.update({(currency, "", name): str(amount) for (currency, name), amount in totals.items()})
    return out


def shown_figures(driver: Any, account: int) -> dict[tuple[str, str, str], str]:
    """The figure cells of the loaded page for ``account``; their visible text must be
    their value (thousands separators aside)."""
    from selenium.webdriver.common.by import By

    out = {}
    for cell in driver.find_elements(By.CSS_SELECTOR, f'td[data-account="{account}"]'):
        value = cell.get_attribute("data-value")
        assert cell.text.replace(",", "") == value, (cell.text, value)
        key = (cell.get_attribute("data-currency"), cell.get_attribute("data-month") or "",
               cell.get_attribute("data-figure"))
        out[key] = value
    return out


async def test_the_browser_shows_the_databases_figures(
        customer_value: ServiceProcess, dbs: Dbs, unique: str, browser: Any,
        tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By

    crm, erp = dbs
    name = f'<i>Dash</i> & "Söhne" <script>window.pwned = 1</script> {unique}'
    account, customer = await new_account(crm, erp, name)
    await make_rows(crm, erp, account, customer)
    base = f"http://127.0.0.1:{customer_value.environment['AMBIDEX_CUSTOMER_VALUE_DASHBOARD_PORT']}"

    expected: dict[tuple[str, str, str], str] = {}

    async def in_database() -> bool:
        expected.clear()
        expected.update(await database_figures(crm, account))
        return (expected.get(("EUR", "", "revenue_booked")) == "1400.00"
                and sum(1 for k in expected if k[1] and k[2] == "margin") == 2
                and any(k[2] == "cost_to_serve" and v == "280.00"  # 5 x 50 + 30 freight
                        for k, v in expected.items()))

    await wait_until(in_database, timeout=180, interval=0.5)

    async with httpx.AsyncClient(base_url=base) as client:
        async def on_dashboard() -> bool:
            response = await client.get(f"/api/customers/{account}")
            if response.status_code != 200:
                return False
            months = {(part["currency"], m["month"], n): v
                      for part in response.json()["currencies"] for m in part["months"]
                      for n, v in m["figures"].items() if n in SHOWN}
            return months == {k: v for k, v in expected.items() if k[1]}

        await wait_until(on_dashboard, timeout=60, interval=0.3)
        body = (await client.get(f"/api/customers/{account}")).json()
    assert body["name"] == name

    # the customer's page: every month and the totals, as in the database
    browser.get(f"{base}/customers/{account}")
    assert shown_figures(browser, account) == expected
    assert browser.find_element(By.TAG_NAME, "h1").text == f"{name} (#{account})"
    assert browser.execute_script("return window.pwned === undefined")
    assert browser.find_elements(By.CSS_SELECTOR, "svg.trend polyline")  # two months: a line
    assert browser.find_elements(By.CSS_SELECTOR, "svg.bars rect")  # where the cost goes
    assert browser.find_element(By.ID, "as-of").get_attribute("datetime")
    shot = tmp_path / "customer-value-dashboard-customer.png"
    browser.save_screenshot(str(shot))
    print(f"screenshot: {shot}")

    # its row in the revenue ranking, on the page its rank puts it
    size = 50
    rank = body["currencies"][0]["ranks"]["revenue"]
    browser.get(f"{base}/top?by=revenue&currency=EUR&size={size}&page={(rank - 1) // size + 1}")
    row = shown_figures(browser, account)
    assert row == {k: v for k, v in expected.items() if not k[1]}
    revenues = [D(c.get_attribute("data-value")) for c in browser.find_elements(
        By.CSS_SELECTOR, 'table.ranking td[data-figure="revenue_booked"]')]
    assert revenues == sorted(revenues, reverse=True)
    assert browser.find_elements(By.CSS_SELECTOR, "svg.bars rect")
    shot = tmp_path / "customer-value-dashboard-ranking.png"
    browser.save_screenshot(str(shot))
    print(f"screenshot: {shot}")

    browser.get(f"{base}/")
    assert len(browser.find_elements(By.CSS_SELECTOR, "svg.chart")) >= 3
    assert browser.execute_script("return window.pwned === undefined")
    shot = tmp_path / "customer-value-dashboard-overview.png"
    browser.save_screenshot(str(shot))
    print(f"screenshot: {shot}")
