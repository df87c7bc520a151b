"""Realistic master data, generated deterministically from a random generator.

Used by the seeder (products, accounts, warehouses) and by the workload (new
accounts, contacts). Pure functions: no database access here.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from decimal import Decimal

from ambidex.workload.money import convert_price
from services.shared.money import round_money

CATALOGUE_CURRENCY = "EUR"
#: Currencies the reference ERP accepts; anything else is rejected by order-sync.
ERP_CURRENCIES: tuple[tuple[str, str, int], ...] = (
    ("EUR", "Euro", 2),
    ("USD", "US Dollar", 2),
    ("GBP", "Pound Sterling", 2),
    ("CHF", "Swiss Franc", 2),
)

# (country, currency, cities with postal code pattern, VAT prefix)
_COUNTRIES: tuple[tuple[str, str, tuple[str, ...], str, int], ...] = (
    ("DE", "EUR", ("Berlin", "Hamburg", "Munich", "Cologne", "Stuttgart", "Leipzig"), "DE", 22),
    ("FR", "EUR", ("Paris", "Lyon", "Toulouse", "Lille", "Nantes"), "FR", 14),
    ("NL", "EUR", ("Amsterdam", "Rotterdam", "Utrecht", "Eindhoven"), "NL", 10),
    ("IT", "EUR", ("Milan", "Turin", "Bologna", "Verona"), "IT", 8),
    ("US", "USD", ("Chicago", "Houston", "Atlanta", "Denver", "Boston"), "US-EIN", 16),
    ("GB", "GBP", ("London", "Manchester", "Birmingham", "Leeds"), "GB", 12),
    ("CH", "CHF", ("Zurich", "Basel", "Geneva", "Bern"), "CHE", 8),
    ("JP", "JPY", ("Tokyo", "Osaka", "Nagoya"), "JP-CN", 5),
)
_COUNTRY_WEIGHTS = tuple(c[4] for c in _COUNTRIES)

_NAME_FIRST = (
    "Nord",
    "Alpen",
    "Rhein",
    "Atlas",
    "Vector",
    "Helix",
    "Orion",
    "Delta",
    "Summit",
    "Pioneer",
    "Keystone",
    "Meridian",
    "Falcon",
    "Granite",
    "Harbor",
    "Lumen",
    "Nexus",
    "Polar",
    "Quantum",
    "Sterling",
    "Titan",
    "Vertex",
    "Zenith",
    "Cobalt",
    "Beacon",
)
_NAME_SECOND = (
    "Mechanical",
    "Packaging",
    "Logistics",
    "Foods",
    "Automation",
    "Energy",
    "Medical",
    "Construction",
    "Textiles",
    "Chemicals",
    "Robotics",
    "Plastics",
    "Electronics",
    "Pharma",
    "Agritech",
    "Marine",
    "Aerospace",
    "Printing",
    "Metals",
    "Hydraulics",
)
_LEGAL_FORM = {
    "DE": "GmbH",
    "FR": "SAS",
    "NL": "B.V.",
    "IT": "S.r.l.",
    "US": "Inc.",
    "GB": "Ltd",
    "CH": "AG",
    "JP": "K.K.",
}
_STREETS = (
    "Industriestrasse",
    "Market Street",
    "Rue de la Gare",
    "Hauptstrasse",
    "Via Roma",
    "Harbour Road",
    "Parkweg",
    "Station Road",
    "Avenue des Champs",
    "Bahnhofstrasse",
)
_INDUSTRIES = ("manufacturing", "retail", "healthcare", "logistics", "construction", "food")
_FIRST_NAMES = (
    "Anna",
    "Lukas",
    "Marie",
    "Jonas",
    "Sophie",
    "Paul",
    "Emma",
    "Luca",
    "Chloé",
    "Hugo",
    "Olivia",
    "James",
    "Amelia",
    "Noah",
    "Yuki",
    "Haruto",
    "Giulia",
    "Matteo",
    "Lena",
    "Daan",
    "Sanne",
    "Ethan",
    "Grace",
    "Leon",
)
_LAST_NAMES = (
    "Müller",
    "Schmidt",
    "Dubois",
    "Martin",
    "Jansen",
    "de Vries",
    "Rossi",
    "Bianchi",
    "Smith",
    "Johnson",
    "Brown",
    "Taylor",
    "Suzuki",
    "Tanaka",
    "Meier",
    "Keller",
    "Fischer",
    "Weber",
    "Bernard",
    "Moreau",
    "Visser",
    "Evans",
    "Walker",
    "Ricci",
)
_JOB_TITLES = (
    "Purchasing Manager",
    "Buyer",
    "CFO",
    "Accounts Payable",
    "Operations Lead",
    "Plant Manager",
    "Procurement Officer",
    "CEO",
)

# (family code, family name, uom, base price range in EUR, make-to-order share)
_FAMILIES: tuple[tuple[str, str, str, tuple[int, int], float], ...] = (
    ("PMP", "Centrifugal Pump", "Unit", (450, 4800), 0.3),
    ("VLV", "Ball Valve", "Unit", (35, 620), 0.05),
    ("MTR", "Electric Motor", "Unit", (280, 3900), 0.25),
    ("GBX", "Gearbox", "Unit", (600, 7200), 0.5),
    ("SNS", "Pressure Sensor", "Unit", (45, 480), 0.0),
    ("CBL", "Control Cable", "m", (2, 28), 0.0),
    ("BRG", "Roller Bearing", "Unit", (12, 260), 0.0),
    ("PNL", "Control Panel", "Unit", (1200, 14500), 0.9),
    ("FLT", "Filter Cartridge", "Unit", (9, 140), 0.0),
    ("LUB", "Industrial Lubricant", "kg", (6, 55), 0.0),
    ("CNV", "Conveyor Module", "Unit", (900, 9800), 0.8),
    ("HSE", "Hydraulic Hose", "m", (8, 95), 0.0),
)
_VARIANTS = ("S", "M", "L", "XL", "HD", "EX", "PRO", "ECO", "V2", "V3")
_MATERIALS = ("Cast Iron", "Stainless", "Bronze", "Aluminium", "Polymer", "Carbon Steel")

_WAREHOUSES: tuple[tuple[str, str, str, str], ...] = (
    ("WH-RTM", "Rotterdam Central Warehouse", "Rotterdam", "NL"),
    ("WH-LEJ", "Leipzig Distribution Centre", "Leipzig", "DE"),
    ("WH-LYS", "Lyon Plant Warehouse", "Lyon", "FR"),
    ("WH-MXP", "Milan Logistics Hub", "Milan", "IT"),
    ("WH-BHX", "Birmingham Depot", "Birmingham", "GB"),
    ("WH-ORD", "Chicago Fulfilment Centre", "Chicago", "US"),
    ("WH-ZRH", "Zurich Spare Parts Store", "Zurich", "CH"),
)
MAX_WAREHOUSES = len(_WAREHOUSES)


@dataclass(frozen=True, slots=True)
class ProductSpec:
    """A product as both systems know it: the CRM's product and the ERP's item."""

    sku: str
    name: str
    uom: str
    list_price: Decimal  # in CATALOGUE_CURRENCY
    standard_cost: Decimal
    make_to_order: bool
    lead_time_days: int
    active: bool


@dataclass(frozen=True, slots=True)
class AccountSpec:
    """A CRM account with its billing data."""

    name: str
    street: str
    city: str
    postal_code: str
    country_code: str
    vat_number: str
    currency_code: str
    credit_limit: Decimal
    industry: str


@dataclass(frozen=True, slots=True)
class ContactSpec:
    first_name: str
    last_name: str
    email: str
    phone: str
    job_title: str


@dataclass(frozen=True, slots=True)
class WarehouseSpec:
    code: str
    name: str
    city: str
    country_code: str


def products(rng: random.Random, count: int) -> list[ProductSpec]:
    """``count`` products with unique SKUs across a realistic industrial catalogue."""
    result: list[ProductSpec] = []
    for n in range(1, count + 1):
        code, family, uom, (low, high), mto_share = _FAMILIES[(n - 1) % len(_FAMILIES)]
        variant = rng.choice(_VARIANTS)
        material = rng.choice(_MATERIALS)
        price = round_money(Decimal(rng.randint(low * 100, high * 100)) / 100, "EUR")
        cost_ratio = Decimal(rng.randint(48, 78)) / 100
        mto = rng.random() < mto_share
        result.append(
            ProductSpec(
                sku=f"{code}-{n:05d}",
                name=f"{family} {material} {variant}",
                uom=uom,
                list_price=price,
                standard_cost=round_money(price * cost_ratio, "EUR"),
                make_to_order=mto,
                lead_time_days=rng.randint(10, 45) if mto else rng.randint(1, 7),
                active=rng.random() > 0.03,
            )
        )
    return result


def account(rng: random.Random, serial: int) -> AccountSpec:
    """One CRM account; ``serial`` keeps VAT numbers distinct."""
    country, currency, cities, vat_prefix, _ = rng.choices(_COUNTRIES, _COUNTRY_WEIGHTS)[0]
    name = f"{rng.choice(_NAME_FIRST)} {rng.choice(_NAME_SECOND)} {_LEGAL_FORM[country]}"
    vat = f"{vat_prefix}{serial:09d}"  # VAT / EIN / corporate number
    limit_eur = Decimal(rng.choice((10, 25, 50, 100, 250, 500))) * 1000
    return AccountSpec(
        name=name,
        street=f"{rng.choice(_STREETS)} {rng.randint(1, 240)}",
        city=rng.choice(cities),
        postal_code=f"{rng.randint(1000, 99999):05d}",
        country_code=country,
        vat_number=vat,
        currency_code=currency,
        credit_limit=convert_price(limit_eur, currency),
        industry=rng.choice(_INDUSTRIES),
    )


def contact(rng: random.Random, account_name: str) -> ContactSpec:
    first = rng.choice(_FIRST_NAMES)
    last = rng.choice(_LAST_NAMES)
    domain = account_name.split()[0].lower() + "-" + account_name.split()[1].lower()
    local = f"{first}.{last}".lower().replace(" ", "")
    return ContactSpec(
        first_name=first,
        last_name=last,
        email=f"{local}@{domain}.example",
        phone=f"+{rng.randint(1, 89)} {rng.randint(100, 999)} {rng.randint(100000, 999999)}",
        job_title=rng.choice(_JOB_TITLES),
    )


def street(rng: random.Random) -> str:
    return f"{rng.choice(_STREETS)} {rng.randint(1, 240)}"


def warehouses(count: int) -> list[WarehouseSpec]:
    """The first ``count`` reference warehouses (at most :data:`MAX_WAREHOUSES`)."""
    if not 1 <= count <= MAX_WAREHOUSES:
        raise ValueError(f"warehouses must be between 1 and {MAX_WAREHOUSES}")
    return [WarehouseSpec(*w) for w in _WAREHOUSES[:count]]
