"""The dashboard's web server: read-only (GET), HTML pages with inline SVG charts and
JSON endpoints with the same figures, on its own port in the service's process.

Routes (``currency`` defaults to the one most customers have figures in; ``page`` from
1, ``size`` 1 to 200):

- ``/`` and ``/api/overview``: currencies, where the cost goes over all customers, the
  first page of both rankings;
- ``/top`` and ``/api/top`` (``by=revenue|margin``, ``currency``, ``page``, ``size``):
  one page of a ranking;
- ``/customers/{id}`` and ``/api/customers/{id}``: one customer's totals, months
  (margin trend), cost breakdown, ranks, open receivables (receivables' outstanding,
  as customer-value counts it) and open delay risks (production-status's).

A request reads the view without yielding in between (one consistent state), then asks
:class:`~.accounts.AccountNames` for the names of the accounts shown; if the database
does not answer in time the page is still served, with account ids. Nothing here costs
more than the rows shown.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, TypeVar

import orjson
from aiohttp import web

from services.customer_value.dashboard import pages
from services.customer_value.dashboard.accounts import AccountNames
from services.customer_value.dashboard.view import (
    RANKINGS,
    DashboardView,
    Page,
    risks_json,
)
from services.shared.health import ObservabilityServer, serve_app

log = logging.getLogger(__name__)

#: rows of each ranking on the overview page
OVERVIEW_SIZE = 10
DEFAULT_SIZE = 25
#: longest wait for the CRM database (the accounts' names) before serving without
LOOKUP_TIMEOUT = 2.0
_CURRENCY = re.compile(r"^[A-Z]{3}$")
#: nothing on the page is fetched from anywhere: no script, no external style or image
HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; "
                               "img-src 'self' data:; base-uri 'none'; form-action 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}
T = TypeVar("T")


class BadQuery(ValueError):
    """A query parameter the dashboard cannot answer (400)."""


def _int(request: web.Request, name: str, default: int) -> int:
    raw = request.query.get(name)
    if raw is None or raw == "":
        return default
    if not raw.isdigit() or len(raw) > 9:
        raise BadQuery(f"{name} must be a positive whole number")
    return int(raw)


def _currency(request: web.Request) -> str | None:
    raw = request.query.get("currency", "").strip().upper()
    if raw and not _CURRENCY.match(raw):
        raise BadQuery("currency must be a three-letter code")
    return raw or None


def _ranking(request: web.Request, view: DashboardView, size: int) -> Page:
    by = request.query.get("by", "revenue")
    if by not in RANKINGS:
        raise BadQuery(f"by must be one of {', '.join(RANKINGS)}")
    try:
        return view.top(by, _currency(request), _int(request, "page", 1),
                        _int(request, "size", size))
    except ValueError as error:
        raise BadQuery(str(error)) from None


def _html(body: str, status: int = 200) -> web.Response:
    return web.Response(text=body, content_type="text/html", charset="utf-8",
                        status=status, headers=HEADERS)


def _json(body: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(body), content_type="application/json",
                        status=status, headers=HEADERS)


def _page_json(view: DashboardView, page: Page, names: Mapping[int, str]) -> dict[str, Any]:
    return {"by": page.by, "currency": page.currency, "page": page.page, "size": page.size,
            "pages": page.pages, "customers": page.customers,
            "rows": [{"rank": r.rank, "account_id": r.account_id,
                      "name": names.get(r.account_id), **r.totals.as_json(),
                      "delay_risks": risks_json(view.risks(r.account_id))["counts"]}
                     for r in page.rows]}


class Dashboard:
    """The handlers over one view and one :class:`AccountNames`."""

    def __init__(self, view: DashboardView, accounts: AccountNames,
                 lookup_timeout: float = LOOKUP_TIMEOUT) -> None:
        self.view = view
        self.accounts = accounts
        self.lookup_timeout = lookup_timeout

    async def _ask(self, what: str, call: Callable[[], Awaitable[T]], fallback: T) -> T:
        try:
            return await asyncio.wait_for(call(), self.lookup_timeout)
        except Exception as error:  # a slow or failing database costs detail, not the page
            log.warning("dashboard lookup failed", extra={"lookup": what,
                                                          "error": type(error).__name__})
            return fallback

    async def _names(self, ids: Sequence[int]) -> Mapping[int, str]:
        return await self._ask("names", lambda: self.accounts.names(sorted(set(ids))), {})

    def _ids(self, pages_shown: Sequence[Page]) -> list[int]:
        return [r.account_id for page in pages_shown for r in page.rows]

    def _overview(self, request: web.Request) -> tuple[str | None, list[Page]]:
        currency = _currency(request) or self.view.default_currency()
        return currency, [self.view.top(by, currency, 1, OVERVIEW_SIZE) for by in RANKINGS]

    async def overview(self, request: web.Request) -> web.Response:
        currency, tops = self._overview(request)
        overall = self.view.overall(currency) if currency else None
        currencies, as_of = self.view.currencies(), self.view.as_of
        risks = pages.risk_counts(self.view, tops)
        names = await self._names(self._ids(tops))
        return _html(pages.overview_page(currencies=currencies, currency=currency,
                                         overall=overall, tops=tops, names=names,
                                         risks=risks, as_of=as_of,
                                         loaded=self.view.loaded))

    async def overview_json(self, request: web.Request) -> web.Response:
        currency, tops = self._overview(request)
        overall = self.view.overall(currency) if currency else None
        currencies, as_of = self.view.currencies(), self.view.as_of
        top = {page.by: _page_json(self.view, page, {}) for page in tops}
        names = await self._names(self._ids(tops))
        for ranking in top.values():
            for row in ranking["rows"]:
                row["name"] = names.get(row["account_id"])
        return _json({"as_of": as_of.isoformat() if as_of else None,
                      "loaded": self.view.loaded,
                      "currencies": [{"currency": c, "customers": n} for c, n in currencies],
                      "currency": currency,
                      "overall": overall.as_json() if overall else None, "top": top})

    async def top(self, request: web.Request) -> web.Response:
        page = _ranking(request, self.view, DEFAULT_SIZE)
        currencies, as_of = self.view.currencies(), self.view.as_of
        risks = pages.risk_counts(self.view, [page])
        names = await self._names(self._ids([page]))
        return _html(pages.ranking_page(currencies=currencies, page=page, names=names,
                                        risks=risks, as_of=as_of, loaded=self.view.loaded))

    async def top_json(self, request: web.Request) -> web.Response:
        page = _ranking(request, self.view, DEFAULT_SIZE)
        body = {"as_of": self.view.as_of.isoformat() if self.view.as_of else None,
                "loaded": self.view.loaded, **_page_json(self.view, page, {})}
        names = await self._names(self._ids([page]))
        for row in body["rows"]:
            row["name"] = names.get(row["account_id"])
        return _json(body)

    def _account(self, request: web.Request) -> int:
        raw = request.match_info["account"]
        if not raw.isdigit() or len(raw) > 18:
            raise BadQuery("the account id must be a whole number")
        return int(raw)

    async def customer(self, request: web.Request) -> web.Response:
        account = self._account(request)
        shown, as_of = self.view.customer(account), self.view.as_of
        if shown is None:
            return _html(pages.not_found_page(
                f"Account {account} has no customer-value figures.", as_of), 404)
        names = await self._names([account])
        return _html(pages.customer_page(shown, names.get(account), as_of,
                                         loaded=self.view.loaded))

    async def customer_json(self, request: web.Request) -> web.Response:
        account = self._account(request)
        shown, as_of = self.view.customer(account), self.view.as_of
        if shown is None:
            return _json({"error": f"account {account} has no customer-value figures"}, 404)
        body = {
            "as_of": as_of.isoformat() if as_of else None, "loaded": self.view.loaded,
            "account_id": account,
            "currencies": [{"currency": part.currency, "ranks": dict(part.ranks),
                            "customers": part.customers, "totals": part.totals.as_json(),
                            "months": [month.as_json() for month in part.months]}
                           for part in shown.currencies],
            "delay_risks": risks_json(shown.risks),
        }
        body["name"] = (await self._names([account])).get(account)
        return _json(body)


@web.middleware
async def _bad_query(request: web.Request,
                     handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                     ) -> web.StreamResponse:
    try:
        return await handler(request)
    except BadQuery as error:
        if request.path.startswith("/api/"):
            return _json({"error": str(error)}, 400)
        return _html(pages.not_found_page(str(error), None), 400)


def dashboard_app(view: DashboardView, accounts: AccountNames, *,
                  lookup_timeout: float = LOOKUP_TIMEOUT) -> web.Application:
    """The read-only application: GET (and HEAD) routes only; anything else is 405."""
    dashboard = Dashboard(view, accounts, lookup_timeout)
    app = web.Application(middlewares=[_bad_query])
    app.router.add_get("/", dashboard.overview)
    app.router.add_get("/top", dashboard.top)
    app.router.add_get("/customers/{account}", dashboard.customer)
    app.router.add_get("/api/overview", dashboard.overview_json)
    app.router.add_get("/api/top", dashboard.top_json)
    app.router.add_get("/api/customers/{account}", dashboard.customer_json)
    return app


async def start_dashboard(view: DashboardView, accounts: AccountNames, host: str,
                          port: int) -> ObservabilityServer:
    """Serve the dashboard on ``host:port`` (0 = a free port; ``.port`` is the bound one)."""
    server = await serve_app(dashboard_app(view, accounts), host, port)
    log.info("customer-value dashboard serving", extra={"url": server.url})
    return server
