"""Datasets by name: built-in tasks, `format:path` files, user files or lists, comma-joined."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

from tl_truth.data.loaders import load_dataset_spec
from tl_truth.data.questions import QADataset
from tl_truth.data.tasks import BUILTIN_TASKS, load_builtin


def _stable_order(ds: QADataset) -> QADataset:
    """A fixed pseudo-random order (hash of task/id), so `--limit N` is a fair sample of both
    splits and of the task, identical in every run."""

    def key(q):
        # Salted: the split itself hashes "task/id", and the same key would put every test
        # question first.
        return hashlib.sha1(f"order:{q.task}/{q.id}".encode()).hexdigest()

    return QADataset(
        ds.name,
        sorted(ds.questions, key=key),
        ds.candidates,
        ds.source,
        dict(ds.skipped),
        dict(ds.task_candidates),
    )


def load_questions(spec: str | Sequence[Any] | QADataset, limit: int | None = None) -> QADataset:
    """Resolve a dataset argument; `limit` applies to each comma-separated part.

    Accepts a built-in name (`capitals`, `city_country`, `currencies`, `elements`, `fanoutqa`,
    `arithmetic`), `format:path` (e.g. `triviaqa:data/unfiltered-web-dev.json`), a CSV / JSONL /
    JSON path, several of those joined by commas, a list of dicts or Questions, or a QADataset.

    Args:
        spec: the dataset: a name, `format:path`, a file path, comma-joined names/paths, a list
            of dicts (``question`` + ``answer``/``answers``, see `loaders.load_user`) or
            `Question`s, or a `QADataset` (returned limited).
        limit: keep at most this many questions of each part. Built-in tasks are taken in a
            fixed pseudo-random order, so a limit is a fair sample of both splits.

    Returns:
        A `QADataset`; several parts are concatenated, each task keeping its own candidates.

    Raises:
        ValueError: an unknown name or format, an empty spec, or a non-positive `limit`.

    >>> ds = load_questions("capitals", limit=4)
    >>> len(ds), ds.name, ds[0].task
    (4, 'capitals', 'capitals')
    >>> both = load_questions("capitals,arithmetic", limit=2)
    >>> [q.task for q in both]
    ['capitals', 'capitals', 'arithmetic', 'arithmetic']
    >>> load_questions([{"question": "What is 2 + 2?", "answer": "4"}])[0].gold
    '4'
    """
    if limit is not None and limit <= 0:
        raise ValueError(f"limit must be positive, got {limit}")
    if isinstance(spec, QADataset):
        return spec.limit(limit)
    if not isinstance(spec, str):
        return load_dataset_spec(list(spec), limit=limit)
    parts = [p.strip() for p in spec.split(",") if p.strip()]
    if not parts:
        raise ValueError("empty dataset argument")
    loaded = []
    for part in parts:
        if part in BUILTIN_TASKS:
            loaded.append(_stable_order(load_builtin(part)).limit(limit))
        else:
            loaded.append(load_dataset_spec(part, limit=limit))
    return loaded[0] if len(loaded) == 1 else QADataset.concat(",".join(parts), loaded)
