"""The dashboard's HTML pages (pure: figures in, a page out).

Every figure shown carries its exact value in ``data-*`` attributes (account, currency,
month, figure, value) beside the formatted text, so a test or a script reads the
figures the page shows. Every text that comes from data (account names above all) is
escaped. A page costs the rows it shows: a ranking page its page size, a customer page
its months.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from decimal import Decimal
from html import escape
from urllib.parse import urlencode

from services.customer_value.dashboard.svg import Bar, bar_chart, line_chart, money_text
from services.customer_value.dashboard.view import (
    RANKINGS,
    CostBreakdown,
    CustomerView,
    DashboardView,
    Figures,
    Page,
    ordered_risks,
)

TITLES = {"revenue": "revenue booked", "margin": "margin"}
#: the figures of a ranking's table and of a customer's months, in column order
COLUMNS = ("revenue_booked", "cost_to_serve", "margin", "invoiced", "collected", "outstanding")
HEADINGS = {"revenue_booked": "revenue booked", "cost_to_serve": "cost to serve",
            "margin": "margin", "invoiced": "invoiced", "collected": "collected",
            "outstanding": "outstanding"}
RECEIVABLES = ("outstanding", "invoiced", "collected")
STYLE = """
body{font-family:system-ui,sans-serif;margin:1.5rem;color:#222;max-width:1100px}
h1{font-size:1.4rem}h2{font-size:1.15rem;margin-top:1.6rem}h3{font-size:1rem}
table{border-collapse:collapse;margin:.5rem 0}th,td{padding:.2rem .6rem;text-align:right}
th:first-child,td:first-child,td.name,th.name{text-align:left}tr:nth-child(even){background:#f4f6f8}
.negative{color:#b5473a}.muted{color:#666}nav a{margin-right:.8rem}.asof{color:#555}
.chart{display:block;margin:.4rem 0}
"""


def as_of_text(as_of: datetime | None) -> str:
    return as_of.isoformat(timespec="seconds") if as_of is not None else "no figures yet"


def customer_name(account_id: int, names: Mapping[int, str]) -> str:
    name = names.get(account_id)
    return f"{name} (#{account_id})" if name is not None else f"account #{account_id}"


def _figure(amount: Decimal, *, account: int | None, currency: str, figure: str,
            month: str | None = None) -> str:
    """A table cell with the figure's exact value in its attributes."""
    attributes = {"data-figure": figure, "data-currency": currency, "data-value": str(amount)}
    if account is not None:
        attributes["data-account"] = str(account)
    if month is not None:
        attributes["data-month"] = month
    css = ' class="negative"' if amount < 0 else ""
    shown = " ".join(f'{k}="{escape(v)}"' for k, v in attributes.items())
    return f"<td {shown}{css}>{money_text(amount)}</td>"


def risk_counts(view: DashboardView, shown: Sequence[Page]) -> dict[int, Mapping[str, int]]:
    """The open delay risks by level of the accounts on the pages shown."""
    out = {}
    for page in shown:
        for row in page.rows:
            risks = view.risks(row.account_id)
            if risks is not None:
                out[row.account_id] = risks.counts
    return out


def _risk_text(counts: Mapping[str, int] | None) -> str:
    if not counts:
        return "none"
    return ", ".join(f"{counts[level]} {level.replace('_', ' ')}"
                     for level in ("late", "at_risk") if counts.get(level))


def _document(title: str, as_of: datetime | None, body: str, loaded: bool = True) -> str:
    loading = ("" if loaded else '<p class="negative" id="loading">Loading the figures: '
               "this page shows part of them.</p>")
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        f"<title>{escape(title)}</title><style>{STYLE}</style></head><body>"
        '<nav><a href="/">overview</a><a href="/top?by=revenue">by revenue</a>'
        '<a href="/top?by=margin">by margin</a></nav>'
        f"<h1>{escape(title)}</h1>"
        f'<p class="asof">Figures as of <time id="as-of" datetime="'
        f'{escape(as_of.isoformat() if as_of else "")}">{escape(as_of_text(as_of))}</time> '
        "(source time of the last change counted)</p>"
        f"{loading}{body}</body></html>"
    )


def _customers(count: int) -> str:
    return "1 customer" if count == 1 else f"{count} customers"


def _currency_links(path: str, currencies: Sequence[tuple[str, int]], chosen: str | None,
                    **query: str) -> str:
    links = []
    for currency, customers in currencies:
        label = f"{escape(currency)} ({_customers(customers)})"
        if currency == chosen:
            links.append(f"<strong>{label}</strong>")
        else:
            href = f"{path}?{urlencode({**query, 'currency': currency})}"
            links.append(f'<a href="{escape(href)}">{label}</a>')
    return f'<p class="currencies">Currency: {" · ".join(links)}</p>' if links else ""


def cost_chart(cost: CostBreakdown, *, title: str, currency: str) -> str:
    bars = [Bar(name, amount) for name, amount in cost.parts()]
    return (bar_chart(bars, title=title, currency=currency)
            + f'<p class="muted">Total {money_text(cost.total)} {escape(currency)}; '
            f"{cost.failed_inspections} failed inspections, {cost.returned} returns "
            "(credited and handling), "
            f"{cost.service_cases} service cases (the CRM records no cost for them).</p>")


def ranking_section(page: Page, names: Mapping[int, str],
                    risks: Mapping[int, Mapping[str, int]], *, more: bool) -> str:
    """A ranking's page: its bar chart and its table."""
    currency = page.currency or ""
    figure = RANKINGS[page.by]
    title = f"Top customers by {TITLES[page.by]} ({currency})"
    if not page.rows:
        return f"<h2>{escape(title)}</h2><p>No customers.</p>"
    bars = [Bar(customer_name(r.account_id, names), r.totals[figure],
                f"/customers/{r.account_id}") for r in page.rows]
    rows = []
    for r in page.rows:
        cells = "".join(_figure(r.totals[name], account=r.account_id, currency=currency,
                                figure=name) for name in COLUMNS)
        rows.append(f'<tr data-rank="{r.rank}"><td>{r.rank}</td><td class="name">'
                    f'<a href="/customers/{r.account_id}">'
                    f"{escape(customer_name(r.account_id, names))}</a></td>{cells}"
                    f'<td class="risks">{_risk_text(risks.get(r.account_id))}</td></tr>')
    head = "".join(f"<th>{HEADINGS[name]}</th>" for name in COLUMNS) + "<th>delay risks</th>"
    link = ""
    if more:
        href = f"/top?{urlencode({'by': page.by, 'currency': currency})}"
        link = f'<p><a href="{escape(href)}">all {_customers(page.customers)} →</a></p>'
    return (f"<h2>{escape(title)}</h2>"
            + bar_chart(bars, title=title, currency=currency)
            + f'<table class="ranking" data-by="{page.by}"><thead><tr><th>#</th>'
            '<th class="name">customer</th>'
            f"{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"
            + link)


def overview_page(*, currencies: Sequence[tuple[str, int]], currency: str | None,
                  overall: Figures | None, tops: Sequence[Page], names: Mapping[int, str],
                  risks: Mapping[int, Mapping[str, int]], as_of: datetime | None,
                  loaded: bool) -> str:
    body = [_currency_links("/", currencies, currency)]
    if currency is None or overall is None:
        body.append("<p>No figures yet.</p>")
    else:
        body.append(f"<h2>Where the cost goes ({escape(currency)}, all customers)</h2>")
        body.append(cost_chart(overall.cost, title=f"Cost to serve by kind ({currency})",
                               currency=currency))
        body.extend(ranking_section(page, names, risks, more=True) for page in tops)
    return _document("Customer value", as_of, "".join(body), loaded)


def ranking_page(*, currencies: Sequence[tuple[str, int]], page: Page,
                 names: Mapping[int, str], risks: Mapping[int, Mapping[str, int]],
                 as_of: datetime | None, loaded: bool) -> str:
    query = {"by": page.by, "size": str(page.size)}
    body = [_currency_links("/top", currencies, page.currency, **query),
            ranking_section(page, names, risks, more=False)]
    links = []
    for label, number in (("← previous", page.page - 1), ("next →", page.page + 1)):
        if 1 <= number <= page.pages:
            href = f"/top?{urlencode({**query, 'currency': page.currency or '', 'page': number})}"
            links.append(f'<a rel="{"prev" if number < page.page else "next"}" '
                         f'href="{escape(href)}">{label}</a>')
    body.append(f'<p class="pages">Page {page.page} of {page.pages} '
                f"({_customers(page.customers)}) {' '.join(links)}</p>")
    return _document(f"Customers by {TITLES[page.by]}", as_of, "".join(body), loaded)


def customer_page(customer: CustomerView, name: str | None, as_of: datetime | None,
                  loaded: bool = True) -> str:
    account = customer.account_id
    title = customer_name(account, {account: name} if name is not None else {})
    body = []
    for part in customer.currencies:
        currency = part.currency
        ranks = ", ".join(f"#{place} of {part.customers} by {TITLES[by]}"
                          for by, place in part.ranks.items())
        body.append(f'<section class="currency" data-currency="{escape(currency)}">'
                    f"<h2>{escape(currency)}</h2><p class=\"muted\">{escape(ranks)}</p>")
        totals = "".join(_figure(part.totals[name], account=account, currency=currency,
                                 figure=name) for name in COLUMNS)
        head = "".join(f"<th>{HEADINGS[name]}</th>" for name in COLUMNS)
        body.append(f'<table class="totals"><thead><tr><th></th>{head}</tr></thead>'
                    f"<tbody><tr><td>all months</td>{totals}</tr></tbody></table>")
        trend = [(v.month, v["margin"]) for v in part.months]
        body.append(f"<h3>Margin per month ({escape(currency)})</h3>")
        body.append(line_chart(trend, title=f"Margin per month ({currency})",
                               currency=currency))
        body.append(f"<h3>Where the cost goes ({escape(currency)})</h3>")
        body.append(cost_chart(part.totals.cost, title=f"Cost to serve by kind ({currency})",
                               currency=currency))
        rows = []
        for value in part.months:
            cells = "".join(_figure(value[name], account=account, currency=currency,
                                    figure=name, month=value.month) for name in COLUMNS)
            rows.append(f"<tr><td>{escape(value.month)}</td>{cells}</tr>")
        body.append(f'<table class="months"><thead><tr><th>month</th>{head}</tr></thead>'
                    f"<tbody>{''.join(rows)}</tbody></table></section>")
    body.append("<h2>Open receivables</h2>")
    if customer.currencies:
        rows = [f"<tr><td>{escape(part.currency)}</td>"
                + "".join(_figure(part.totals[name], account=account, currency=part.currency,
                                  figure=name) for name in RECEIVABLES) + "</tr>"
                for part in customer.currencies]
        body.append('<table class="receivables"><thead><tr><th>currency</th>'
                    + "".join(f"<th>{name}</th>" for name in RECEIVABLES)
                    + f"</tr></thead><tbody>{''.join(rows)}</tbody></table>"
                    '<p class="muted">receivables\' positions of the account\'s contracts.</p>')
    else:
        body.append("<p>None.</p>")
    body.append("<h2>Open delay risks</h2>")
    if customer.risks is not None:
        rows = [f'<tr class="{escape(r.level)}" data-order="{r.crm_order_id}">'
                f"<td>{escape(r.number)}</td><td>{escape(r.level)}</td>"
                f"<td>{escape(r.reason or '')}</td><td>{escape(r.stage)}</td>"
                f"<td>{escape(r.promised_date.isoformat() if r.promised_date else '')}</td>"
                f"<td>{escape(r.predicted_p50.isoformat() if r.predicted_p50 else '')}</td></tr>"
                for r in ordered_risks(customer.risks)]
        body.append(f"<p>{escape(_risk_text(customer.risks.counts))}</p>"
                    '<table class="risks"><thead><tr><th>order</th><th>level</th>'
                    "<th>reason</th><th>stage</th><th>promised</th><th>predicted (p50)</th>"
                    f"</tr></thead><tbody>{''.join(rows)}</tbody></table>")
    else:
        body.append("<p>None.</p>")
    return _document(title, as_of, "".join(body), loaded)


def not_found_page(what: str, as_of: datetime | None) -> str:
    return _document("Not found", as_of, f"<p>{escape(what)}</p>")
