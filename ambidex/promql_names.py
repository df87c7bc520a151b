"""The metric names a PromQL expression reads (for checking them against a live scrape).

A small lexer, not a PromQL parser: strings, label matchers ``{...}``, range and subquery
brackets ``[...]``, the label lists of ``by``/``without``/``on``/``ignoring``/
``group_left``/``group_right``, function names (an identifier before ``(``), keywords and
numbers are dropped; every identifier left is a metric name. Enough for the expressions
of our alerts and dashboards; ``promtool check rules`` checks their syntax.
"""

from __future__ import annotations

import re

_STRINGS = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_MATCHERS = re.compile(r"\{[^{}]*\}")
_RANGES = re.compile(r"\[[^\[\]]*\]")
_LABEL_LISTS = re.compile(
    r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)", re.IGNORECASE
)
_OFFSET = re.compile(r"\b(?:offset)\s+-?\w+|@\s*[\w.()]+", re.IGNORECASE)
_IDENTIFIER = re.compile(r"(?<![\w.$])([a-zA-Z_:][a-zA-Z0-9_:]*)(\s*\()?")
_KEYWORDS = frozenset(
    {
        "and",
        "or",
        "unless",
        "bool",
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
        "offset",
        "inf",
        "nan",
    }
)


def metric_names(expression: str) -> set[str]:
    """Metric names in ``expression``."""
    text = _STRINGS.sub('""', expression)
    text = _MATCHERS.sub(" ", text)
    text = _RANGES.sub(" ", text)
    text = _LABEL_LISTS.sub(" ", text)
    text = _OFFSET.sub(" ", text)
    names = set()
    for match in _IDENTIFIER.finditer(text):
        name, call = match.group(1), match.group(2)
        if call or name.lower() in _KEYWORDS:
            continue
        names.add(name)
    return names


#: series Prometheus itself adds to every scraped target
SYNTHETIC = frozenset(
    {"up", "scrape_duration_seconds", "scrape_samples_scraped", "scrape_series_added"}
)
#: the sample names a family of each type has, whether or not it has samples yet
_SUFFIXES = {
    "counter": ("_total", "_created"),
    "histogram": ("_bucket", "_count", "_sum", "_created"),
    "summary": ("_count", "_sum", "_created"),
}


def exposed_names(families: dict[str, tuple[str, set[str]]]) -> set[str]:
    """Every name a query can use, from scraped ``{family: (type, sample names)}``: a
    family declared without samples yet (a labelled metric nothing has touched) counts."""
    names = set(SYNTHETIC)
    for family, (kind, samples) in families.items():
        names |= {family, *samples, *(family + s for s in _SUFFIXES.get(kind, ()))}
    return names


def scraped_families(text: str) -> dict[str, tuple[str, set[str]]]:
    """``{family: (type, sample names)}`` of a Prometheus text exposition."""
    from prometheus_client.parser import text_string_to_metric_families

    return {
        family.name: (family.type, {sample.name for sample in family.samples})
        for family in text_string_to_metric_families(text)
    }
