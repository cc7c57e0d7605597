"""Helpers every built-in task builder shares: accent folding, alias lists, imports, ordering.

A built-in task is built from a PyPI package's data; the builders (`country_tasks`,
`other_tasks`) all need to fold accents the same way, dedupe aliases the same way, say which
package to install when one is missing, and sort their questions by id so that the dataset is
the same on every machine.
"""

from __future__ import annotations

import importlib.util
import unicodedata
from collections import Counter
from collections.abc import Iterable

from tl_truth.data.questions import Question


def fold(text: str) -> str:
    """Accent-folded form: NFKD, combining marks stripped ("Bogotá" -> "Bogota")."""
    decomposed = unicodedata.normalize("NFKD", text)
    return "".join(c for c in decomposed if not unicodedata.combining(c))


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
