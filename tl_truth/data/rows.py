"""Rows: reading the records of a data file, and collecting them into a `QADataset`.

Every file loader (`native`, `user`, `hub`) shares this plumbing, so it lives apart from the
formats: readers that turn a .json/.jsonl/.csv/.tsv/.parquet file (gzipped or not) into dicts,
with None for a record that cannot be parsed; helpers that read one cell as clean text; and
`_Builder`, which turns records into `Question`s and counts every record it cannot use under a
reason in `QADataset.skipped`, so that nothing is ever dropped silently.
"""

from __future__ import annotations

import ast
import csv
import gzip
import json
import math
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO, Any

from tl_truth.data.questions import GradeKind, QADataset, Question, make_question

Row = dict[str, Any]
PathLike = str | Path

_KINDS = {
    ".json": "json",
    ".jsonl": "jsonl",
    ".jsonlines": "jsonl",
    ".ndjson": "jsonl",
    ".csv": "csv",
    ".tsv": "tsv",
    ".parquet": "parquet",
}

# --------------------------------------------------------------------------- reading rows


def _kind(path: Path) -> str:
    """File kind from the extension, looking through a trailing .gz ("" when unknown)."""
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] == ".gz":
        suffixes.pop()
    return _KINDS.get(suffixes[-1], "") if suffixes else ""


def _open_text(path: Path, encoding: str = "utf-8") -> IO[str]:
    if path.suffix.lower() == ".gz":
        return gzip.open(path, "rt", encoding=encoding, newline="")
    return path.open(encoding=encoding, newline="")


def _iter_rows(path: Path, kind: str | None = None) -> Iterator[Row | None]:
    """Records of a file as dicts; None stands for a record that could not be parsed.

    A file that cannot be read as its kind at all (binary, wrong encoding, a broken gzip or
    parquet file) raises ValueError naming the file, never a bare decoder error.
    """
    try:
        yield from _rows_of_kind(path, kind or _kind(path))
    except UnicodeDecodeError as e:
        raise ValueError(
            f"{path}: not UTF-8 text ({e.reason}); is it a binary file, or "
            "another encoding? Save it as UTF-8 CSV / JSON / JSONL"
        ) from e
    except (OSError, EOFError) as e:  # gzip.BadGzipFile is an OSError
        raise ValueError(f"{path}: cannot be read ({type(e).__name__}: {e})") from e
    except Exception as e:
        if type(e).__module__.startswith("pyarrow"):
            raise ValueError(f"{path}: not a readable parquet file ({e})") from e
        raise


def _rows_of_kind(path: Path, kind: str) -> Iterator[Row | None]:
    if kind == "jsonl":
        return _jsonl_rows(path)
    if kind == "json":
        return _json_rows(path)
    if kind in ("csv", "tsv"):
        return _csv_rows(path, "\t" if kind == "tsv" else ",")
    if kind == "parquet":
        return _parquet_rows(path)
    raise ValueError(
        f"{path}: cannot tell the file type from {path.name!r}; "
        "expected .json, .jsonl, .csv, .tsv or .parquet"
    )


def _jsonl_rows(path: Path) -> Iterator[Row | None]:
    with _open_text(path) as f:
        for line in f:
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError:
                yield None
                continue
            yield obj if isinstance(obj, dict) else None


def _json_rows(path: Path) -> Iterator[Row | None]:
    with _open_text(path) as f:
        text = f.read()
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        # `datasets.Dataset.to_json` writes JSON lines even under a .json name.
        if e.msg == "Extra data":
            yield from _jsonl_rows(path)
            return
        raise ValueError(f"{path}: invalid JSON ({e})") from e
    for rec in _json_records(data, path):
        yield rec if isinstance(rec, dict) else None


def _json_records(data: Any, path: Path) -> list[Any]:
    if isinstance(data, list):
        return data
    if isinstance(data, dict):
        for key in ("Data", "data", "questions", "rows"):  # TriviaQA uses "Data"
            if isinstance(data.get(key), list):
                return data[key]
        raise ValueError(
            f"{path}: expected a JSON list of records or an object with a 'Data' list, "
            f"got an object with keys {sorted(data)[:10]}"
        )
    raise ValueError(f"{path}: expected a JSON list of records, got {type(data).__name__}")


def _csv_rows(path: Path, delimiter: str) -> Iterator[Row | None]:
    csv.field_size_limit(max(csv.field_size_limit(), 2**31 - 1))  # long reviews and contexts
    with _open_text(path, encoding="utf-8-sig") as f:
        for row in csv.DictReader(f, delimiter=delimiter):
            # DictReader files surplus cells under the key None: the row is misaligned.
            yield None if None in row else row


def _parquet_rows(path: Path) -> Iterator[Row | None]:
    import pyarrow.parquet as pq  # only parquet needs it

    for batch in pq.ParquetFile(path).iter_batches(batch_size=1024):
        yield from batch.to_pylist()


# --------------------------------------------------------------------------- cell helpers


def _present(value: Any) -> bool:
    if value is None:
        return False
    if isinstance(value, str):
        return bool(value.strip())
    if isinstance(value, float):
        return not math.isnan(value)
    return True


def _text(value: Any) -> str:
    """A cell as clean text: None/NaN -> "", 3.0 -> "3" (numbers round-tripped through CSV)."""
    if not _present(value):
        return ""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value).strip()


def _texts(values: Iterable[Any]) -> list[str]:
    return [t for t in map(_text, values) if t]


def _first(row: Mapping[str, Any], keys: Sequence[str]) -> Any:
    """The value of the first key present with a non-empty value, else None."""
    for key in keys:
        if _present(row.get(key)):
            return row[key]
    return None


def _listish(value: Any) -> list[Any]:
    """A list from a list, or a python/JSON list literal such as "['Paris', 'paris']"."""
    if not _present(value):
        return []
    if isinstance(value, (list, tuple)):
        return list(value)
    if isinstance(value, str):
        s = value.strip()
        if s.startswith(("[", "(")) and s.endswith(("]", ")")):
            try:
                parsed = ast.literal_eval(s)  # literals only: safe on untrusted files
            except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
                return [s]
            if isinstance(parsed, (list, tuple)):
                return list(parsed)
        return [s]
    return [value]


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _row_id(row: Mapping[str, Any], keys: Sequence[str], index: int) -> str:
    """The native id when the row has one, else the row index."""
    value = _first(row, keys)
    return _text(value) if value is not None else str(index)


def _require_column(row: Mapping[str, Any], keys: Sequence[str], what: str, source: str) -> None:
    """Fail loudly on a wrong file rather than skipping every row of it."""
    if not any(k in row for k in keys):
        raise ValueError(
            f"{source}: no {what} column (looked for {', '.join(keys)}; found {', '.join(map(str, row))})"
        )


# --------------------------------------------------------------------------- collecting


class _Builder:
    """Collects one dataset's questions, counting every record it cannot use."""

    def __init__(
        self, name: str, source: str, limit: int | None, candidates: tuple[str, ...] = ()
    ) -> None:
        if limit is not None and limit < 1:
            raise ValueError(f"limit must be a positive integer or None, got {limit!r}")
        self.name, self.source, self.limit, self.candidates = name, source, limit, candidates
        self.questions: list[Question] = []
        self.skipped: Counter[str] = Counter()
        self._keys: set[tuple[str, str]] = set()

    @property
    def full(self) -> bool:
        return self.limit is not None and len(self.questions) >= self.limit

    def skip(self, reason: str, n: int = 1) -> None:
        self.skipped[reason] += n

    def add(
        self,
        qid: str,
        question: Any,
        answers: Iterable[Any],
        *,
        task: str,
        skill: str,
        grade: GradeKind = "alias",
        options: Sequence[str] = (),
    ) -> None:
        text, golds = _text(question), _texts(answers)
        reason = _problem(text, golds, grade, options)
        if reason:
            self.skip(reason)
            return
        try:
            q = make_question(qid, text, golds, task, skill, grade, _texts(options))
        except ValueError:
            self.skip("invalid")
            return
        self.add_question(q)

    def add_question(self, q: Question) -> None:
        key = (q.task, q.id)
        if key in self._keys:  # downstream code keys results by id
            self.skip("duplicate_id")
            return
        self._keys.add(key)
        self.questions.append(q)

    def records(self, rows: Iterable[Row | None]) -> Iterator[tuple[int, Row]]:
        """Enumerate the parseable records until full, counting the unparseable ones."""
        for i, row in enumerate(rows):
            if self.full:
                return
            if not isinstance(row, dict):
                self.skip("bad_record")
                continue
            yield i, row

    def build(self) -> QADataset:
        if not self.questions:
            detail = f"skipped: {dict(self.skipped)}" if self.skipped else "no records"
            raise ValueError(f"{self.source}: no usable {self.name} records ({detail})")
        return QADataset(
            self.name, self.questions, self.candidates, self.source, dict(self.skipped)
        )


def _problem(text: str, golds: list[str], grade: str, options: Sequence[str]) -> str | None:
    """Why a record cannot become a Question, or None when it can."""
    if not text:
        return "empty_question"
    if not golds:
        return "no_answer"
    if grade == "choice":
        opts = _texts(options)
        folded = {o.casefold() for o in opts}
        if len(opts) < 2 or len(opts) != len(options) or len(folded) != len(opts):
            return "bad_options"
        if golds[0].casefold() not in folded:
            return "answer_not_in_options"
    return None


# --------------------------------------------------------------------------- file loaders

Converter = Callable[[Iterable[Any], _Builder], None]


def _existing(path: PathLike, fmt: str) -> Path:
    p = Path(path).expanduser()
    if not p.exists():
        raise FileNotFoundError(f"{fmt} data not found: {p}")
    return p


def _load_file(
    fmt: str,
    path: PathLike,
    convert: Converter,
    limit: int | None,
    *,
    kind: str | None = None,
    candidates: tuple[str, ...] = (),
) -> QADataset:
    p = _existing(path, fmt)
    if p.is_dir():
        raise ValueError(f"{p} is a directory; the {fmt} loader reads a file")
    b = _Builder(fmt, str(p), limit, candidates)
    convert(_iter_rows(p, kind), b)
    return b.build()
