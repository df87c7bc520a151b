"""The dashboard's web app: the figures on its pages and in its JSON are the view's,
account names are escaped everywhere, the app is read-only, nothing on a page is
fetched from elsewhere, a page is served (with account ids) when the CRM database
fails, and serving a page never walks over every customer."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Mapping, Sequence
from datetime import UTC, date, datetime

import pytest
from aiohttp.test_utils import TestClient, TestServer

from services.customer_value.dashboard.server import dashboard_app
from services.customer_value.dashboard.view import DashboardView
from services.customer_value.risks import AccountRisks, OrderRisk
from tests.unit.test_customer_value_dashboard_view import _NoScan, value

EVIL = '<script>alert("x")</script> & Söhne'
AS_OF = datetime(2026, 12, 3, 9, 30, tzinfo=UTC)


class FakeAccounts:
    def __init__(self, *, fail: bool = False, hang: bool = False) -> None:
        self.fail, self.hang = fail, hang
        self.asked: list[Sequence[int]] = []

    async def names(self, account_ids: Sequence[int]) -> Mapping[int, str]:
        self.asked.append(account_ids)
        if self.fail:
            raise OSError("database down")
        if self.hang:
            await asyncio.sleep(3600)
        return {a: EVIL if a == 1 else f"Customer {a}" for a in account_ids}


def sample_view() -> DashboardView:
    view = DashboardView()
    view.commit([value(1, "2026-01", revenue="1000.00", goods="400.00", freight="20.00"),
                 value(1, "2026-02", revenue="500.00", goods="600.00", rework="5.00"),
                 value(2, "2026-01", revenue="800.00", goods="100.00"),
                 value(3, "2026-01", "USD", revenue="50.00", outstanding="1200.00")],
                as_of=AS_OF)
    view.set_risks(AccountRisks(1, {"late": 1, "at_risk": 1}, (
        OrderRisk(78, "SO78", "at_risk", "qc_overdue", "in_quality_control", None, None),
        OrderRisk(77, "SO<77>", "late", "promise_missed", "in_production",
                  date(2026, 11, 30), date(2026, 12, 20)))))
    return view


@pytest.fixture
async def client() -> AsyncIterator[TestClient]:  # type: ignore[type-arg]
    async with TestClient(TestServer(dashboard_app(sample_view(), FakeAccounts()))) as c:
        yield c


def cells(html: str) -> dict[tuple[str, ...], str]:
    """Every figure cell: (account, currency, month or '', figure) -> data-value."""
    out = {}
    for attributes in re.findall(r"<td ([^>]*data-figure[^>]*)>", html):
        found = dict(re.findall(r'(data-[a-z]+)="([^"]*)"', attributes))
        out[(found.get("data-account", ""), found["data-currency"],
             found.get("data-month", ""), found["data-figure"])] = found["data-value"]
    return out


async def test_overview_shows_the_rankings_costs_and_as_of_with_names_escaped(
        client: TestClient) -> None:  # type: ignore[type-arg]
    response = await client.get("/")
    assert response.status == 200
    html = await response.text()
    assert "<script>" not in html and "&lt;script&gt;" in html
    assert html.count("<svg") == 3  # cost breakdown, revenue and margin bars
    assert AS_OF.isoformat() in html
    shown = cells(html)
    assert shown[("1", "EUR", "", "revenue_booked")] == "1500.00"
    assert shown[("1", "EUR", "", "margin")] == "475.00"  # 1500 - (1000 + 20 + 5)
    assert shown[("2", "EUR", "", "margin")] == "700.00"
    assert ("3", "USD", "", "revenue_booked") not in shown  # EUR has more customers
    rows = re.findall(r'<table class="ranking" data-by="(\w+)">(.*?)</table>', html)
    ranked = {by: re.findall(r'href="/customers/(\d+)"', table) for by, table in rows}
    assert ranked == {"revenue": ["1", "2"], "margin": ["2", "1"]}
    assert "1 late, 1 at risk" in html
    usd = cells(await (await client.get("/?currency=usd")).text())
    assert usd == {("3", "USD", "", n): v for (_, _, _, n), v in usd.items()}
    assert usd[("3", "USD", "", "revenue_booked")] == "50.00"


async def test_json_gives_the_same_figures_a_page_at_a_time(
        client: TestClient) -> None:  # type: ignore[type-arg]
    body = await (await client.get("/api/top?by=margin&currency=EUR&page=2&size=1")).json()
    assert (body["page"], body["pages"], body["customers"]) == (2, 2, 2)
    [row] = body["rows"]
    assert (row["rank"], row["account_id"], row["name"]) == (2, 1, EVIL)
    assert row["figures"]["margin"] == "475.00"
    assert row["cost"] == {"production": "1000.00", "quality": "5.00", "freight": "20.00",
                           "returns": "0.00", "total": "1025.00", "failed_inspections": 1,
                           "service_cases": 0, "returned": 0}
    assert row["delay_risks"] == {"late": 1, "at_risk": 1}
    overview = await (await client.get("/api/overview")).json()
    assert overview["as_of"] == AS_OF.isoformat()
    assert overview["currencies"] == [{"currency": "EUR", "customers": 2},
                                      {"currency": "USD", "customers": 1}]
    assert overview["overall"]["figures"]["revenue_booked"] == "2300.00"


async def test_customer_page_has_trend_costs_receivables_and_risks(
        client: TestClient) -> None:  # type: ignore[type-arg]
    html = await (await client.get("/customers/1")).text()
    assert "<script>" not in html and "SO&lt;77&gt;" in html
    assert "<polyline" in html  # two months: a trend line
    shown = cells(html)
    assert shown[("1", "EUR", "2026-01", "margin")] == "580.00"
    assert shown[("1", "EUR", "2026-02", "margin")] == "-105.00"
    assert shown[("1", "EUR", "", "margin")] == "475.00"
    assert re.findall(r'data-order="(\d+)"', html) == ["77", "78"]  # late first
    body = await (await client.get("/api/customers/1")).json()
    assert body["name"] == EVIL
    assert [m["figures"]["margin"] for m in body["currencies"][0]["months"]] == [
        "580.00", "-105.00"]
    assert body["currencies"][0]["ranks"] == {"revenue": 1, "margin": 2}
    assert [o["level"] for o in body["delay_risks"]["orders"]] == ["late", "at_risk"]
    usd = cells(await (await client.get("/customers/3")).text())
    assert usd[("3", "USD", "", "outstanding")] == "1200.00"
    assert (await client.get("/customers/99")).status == 404
    assert (await client.get("/api/customers/99")).status == 404


async def test_read_only_and_nothing_fetched_from_elsewhere(
        client: TestClient) -> None:  # type: ignore[type-arg]
    for path in ("/", "/top?by=margin", "/customers/1", "/api/top"):
        assert (await client.post(path)).status == 405
        assert (await client.delete(path)).status == 405
    for path in ("/", "/top?by=revenue", "/customers/1"):
        response = await client.get(path)
        html = await response.text()
        assert "default-src 'none'" in response.headers["Content-Security-Policy"]
        assert not re.search(r"<(script|link|img|iframe)\b", html)
        assert set(re.findall(r"https?://[^\"' ]+", html)) <= {"http://www.w3.org/2000/svg"}


@pytest.mark.parametrize("path", ["/top?by=volume", "/top?page=0", "/top?size=5000",
                                  "/api/top?page=x", "/api/top?currency=EURO",
                                  "/customers/abc"])
async def test_bad_queries_are_refused(client: TestClient,  # type: ignore[type-arg]
                                       path: str) -> None:
    response = await client.get(path)
    assert response.status in (400, 404)
    if path.startswith("/api/"):
        assert "error" in await response.json()


async def test_pages_are_served_when_the_crm_database_fails_or_hangs() -> None:
    for accounts in (FakeAccounts(fail=True), FakeAccounts(hang=True)):
        app = dashboard_app(sample_view(), accounts, lookup_timeout=0.05)
        async with TestClient(TestServer(app)) as c:
            html = await (await c.get("/")).text()
            assert "account #1" in html and cells(html)[("1", "EUR", "", "margin")] == "475.00"
            assert (await c.get("/customers/1")).status == 200


async def test_a_page_never_walks_over_every_customer() -> None:
    view = DashboardView()
    view.commit(value(a, revenue=str(a % 97), goods=str(a % 13)) for a in range(3000))
    for name in ("_months", "_totals", "_currencies_of", "_overall", "_risks"):
        setattr(view, name, _NoScan(getattr(view, name)))
    accounts = FakeAccounts()
    async with TestClient(TestServer(dashboard_app(view, accounts))) as c:
        for path in ("/", "/top?by=margin&page=7&size=50", "/api/top?page=3",
                     "/customers/5", "/api/customers/5", "/api/overview"):
            assert (await c.get(path)).status == 200, path
    assert max(len(ids) for ids in accounts.asked) == 50
