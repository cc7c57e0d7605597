"""Your own questions: a CSV/TSV/JSON/JSONL/parquet file, or a Python list of dicts.

The one format that is ours rather than a paper dataset's: a row needs a question and an answer
(or a list of answers), and may say its id, task, skill, grade and options. Kept apart from the
native formats because its columns are a contract with users, documented in `load_user`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, cast

from tl_truth.data.questions import GradeKind, QADataset, Question
from tl_truth.data.rows import (
    PathLike,
    Row,
    _Builder,
    _first,
    _listish,
    _load_file,
    _require_column,
    _row_id,
    _text,
    _texts,
)

__all__ = ["load_user"]

_GRADES = ("alias", "numeric", "choice")

_USER_QUESTION = ("question", "Question")
_USER_ANSWER = ("answers", "answer", "Answers", "Answer")


def _convert_user(rows: Iterable[Row | Question | None], b: _Builder) -> None:
    checked = False
    for i, row in enumerate(rows):
        if b.full:
            return
        if isinstance(row, Question):
            b.add_question(row)
            continue
        if not isinstance(row, Mapping):
            b.skip("bad_record")
            continue
        if not checked:
            _require_column(row, _USER_QUESTION, "question", b.source)
            _require_column(row, _USER_ANSWER, "answer/answers", b.source)
            checked = True
        grade = cast(GradeKind, _text(row.get("grade")) or "alias")
        if grade not in _GRADES:
            b.skip("bad_grade")
            continue
        b.add(
            _row_id(row, ("id",), i),
            _first(row, _USER_QUESTION),
            _listish(_first(row, _USER_ANSWER)),
            task=_text(row.get("task")) or "user",
            skill=_text(row.get("skill")) or "factual",
            grade=grade,
            options=_texts(_listish(row.get("options"))),
        )


def load_user(
    data: PathLike | Sequence[Mapping[str, Any] | Question],
    *,
    limit: int | None = None,
    kind: str | None = None,
) -> QADataset:
    """User data: a list of dicts or Questions, or a csv/tsv/json/jsonl/parquet file.

    Needs `question` and `answer` or `answers` (a list, or a list literal in a CSV cell);
    optional `id`, `task` (default "user"), `skill` (default "factual"), `grade`, `options`.
    `kind` forces the file reader ("csv", "json", "jsonl"...) whatever the extension.

    Args:
        data: a path to a .csv/.tsv/.json/.jsonl/.parquet file (gzip allowed except parquet),
            or a list of dicts or `Question`s.
        limit: keep the first `limit` usable questions (and stop reading there).
        kind: force the file reader whatever the extension.

    Returns:
        A `QADataset` named "user"; unusable rows are counted in `skipped` by reason.

    Raises:
        ValueError: no question or answer column, or no usable row at all.

    >>> ds = load_user([{"question": "What is 2 + 2?", "answer": "4", "grade": "numeric"},
    ...                 {"question": "Capital of Italy?", "answers": ["Rome", "Roma"]},
    ...                 {"question": "", "answer": "x"}])
    >>> len(ds), ds[1].answers, ds[0].task, ds.skipped
    (2, ('Rome', 'Roma'), 'user', {'empty_question': 1})
    """
    if isinstance(data, (str, Path)):
        return _load_file("user", data, _convert_user, limit, kind=kind)
    b = _Builder("user", "<list>", limit)
    _convert_user(data, b)
    return b.build()
