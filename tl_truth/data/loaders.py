"""Loaders for the native file formats of the paper's datasets, read from local paths.

Every loader returns a `QADataset` and downloads nothing (`load_hub` is the one exception, and
only when the Hugging Face hub is reachable). A record that cannot become a `Question` is
counted in `QADataset.skipped` under a reason ("no_answer", "empty_question", "bad_record"...),
never dropped silently. Ids are the native ids where the format has them, else the row index,
so the hashed train/test split of `questions.split_for` is the same in every run.

==============  ===========  ==================================================================
format          skill        accepted input
==============  ===========  ==================================================================
triviaqa        factual      original json {"Data": [...]}; HF trivia_qa rows (json/jsonl/parquet)
nq              factual      NQ simplified jsonl (short answers are document token spans);
                             NQ-open rows {"question", "answer": [...]}
hotpotqa        multi_hop    original json list ("_id"); HF hotpot_qa rows ("id")
mnli            nli          multinli_1.0 jsonl (gold_label); HF glue/multi_nli rows (label 0-2)
imdb            sentiment    aclImdb directory (<split>/pos|neg/*.txt); HF imdb rows
winogrande      commonsense  rows with a "_" sentence, option1/option2 and answer "1"/"2"
reference_csv   factual      CSVs of github.com/technion-cs-nlp/LLMsKnow (data/ and output/)
user, csv,      (column)     question + answer/answers [+ id, task, skill, grade, options];
json, jsonl                  also a Python list of dicts or `Question`s
==============  ===========  ==================================================================

Files may be .json, .jsonl, .csv, .tsv or .parquet, and .json/.jsonl/.csv/.tsv may be gzipped.
`limit` keeps the first n usable questions and stops reading there, so skipped counts cover
only the records read.

This module reads a `format:path` spec (`load_dataset_spec`) and re-exports every loader: the
paper's formats live in `tl_truth.data.native`, user data in `tl_truth.data.user`, the hub in
`tl_truth.data.hub`, and the shared file reading in `tl_truth.data.rows`.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from tl_truth.data.hub import HUB_DATASETS, hub_reachable, load_hub
from tl_truth.data.native import (
    IMDB_LABELS,
    NLI_LABELS,
    load_hotpotqa,
    load_imdb,
    load_mnli,
    load_nq,
    load_reference_csv,
    load_triviaqa,
    load_winogrande,
)
from tl_truth.data.questions import QADataset, Question
from tl_truth.data.rows import Converter as Converter
from tl_truth.data.rows import PathLike, _kind
from tl_truth.data.rows import Row as Row
from tl_truth.data.user import load_user

__all__ = [
    "FORMATS",
    "HUB_DATASETS",
    "IMDB_LABELS",
    "NLI_LABELS",
    "hub_reachable",
    "load_dataset_spec",
    "load_hotpotqa",
    "load_hub",
    "load_imdb",
    "load_mnli",
    "load_nq",
    "load_reference_csv",
    "load_triviaqa",
    "load_user",
    "load_winogrande",
]

Loader = Callable[..., QADataset]

FORMATS: dict[str, Loader] = {
    "triviaqa": load_triviaqa,
    "nq": load_nq,
    "hotpotqa": load_hotpotqa,
    "mnli": load_mnli,
    "imdb": load_imdb,
    "winogrande": load_winogrande,
    "reference_csv": load_reference_csv,
    "user": load_user,
    "csv": functools.partial(load_user, kind="csv"),
    "jsonl": functools.partial(load_user, kind="jsonl"),
    "json": functools.partial(load_user, kind="json"),
}

_FORMAT_LIKE = re.compile(r"[A-Za-z][A-Za-z0-9_]+")  # two letters at least: "C:" is a drive


def _accepted() -> str:
    return (
        f"accepted: 'format:path' with format one of {', '.join(FORMATS)}; "
        "a path to a .csv/.tsv/.json/.jsonl/.parquet file of user data; or a list of dicts"
    )


def load_dataset_spec(
    spec: PathLike | Sequence[Mapping[str, Any] | Question], *, limit: int | None = None
) -> QADataset:
    r"""Load `format:path` (e.g. "triviaqa:data/unfiltered-web-dev.json"), a user-data file
    path, or a list of user records. Built-in task names are not handled here.

    Args:
        spec: ``format:path`` with a format of `FORMATS`, a path to a user-data file, or a
            list of user records (see `load_user`).
        limit: keep the first `limit` usable questions.

    Returns:
        The `QADataset` of that format's loader.

    Raises:
        ValueError: an unknown format, a missing path, or a file whose format cannot be told.

    >>> import tempfile
    >>> from pathlib import Path
    >>> with tempfile.TemporaryDirectory() as d:
    ...     path = Path(d, "mine.csv")
    ...     _ = path.write_text("question,answers\nCapital of Italy?,\"['Rome', 'Roma']\"\n")
    ...     ds = load_dataset_spec(f"csv:{path}")
    >>> ds.name, ds[0].answers
    ('user', ('Rome', 'Roma'))
    """
    if isinstance(spec, Path):
        return _load_path(spec, str(spec), limit)
    if not isinstance(spec, str):
        return load_user(spec, limit=limit)
    spec = spec.strip()
    fmt, sep, rest = spec.partition(":")
    if sep and fmt in FORMATS:
        if not rest.strip():
            raise ValueError(f"{spec!r}: no path after '{fmt}:'")
        return FORMATS[fmt](rest.strip(), limit=limit)
    if sep and _FORMAT_LIKE.fullmatch(fmt) and not Path(spec).exists():
        raise ValueError(f"unknown format {fmt!r} in {spec!r}; {_accepted()}")
    return _load_path(Path(spec), spec, limit)


def _load_path(path: Path, spec: str, limit: int | None) -> QADataset:
    if _kind(path):
        return load_user(path, limit=limit)
    if path.exists():
        raise ValueError(f"cannot tell the format of {path}; prefix it, e.g. 'imdb:{path}'")
    raise ValueError(f"{spec!r} is neither a data file nor 'format:path'; {_accepted()}")
