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
"""

from __future__ import annotations

import ast
import csv
import functools
import gzip
import json
import math
import os
import re
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO, Any, cast

from tl_truth.data.questions import GradeKind, QADataset, Question, make_question

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

Row = dict[str, Any]
PathLike = str | Path

NLI_LABELS = ("entailment", "neutral", "contradiction")  # index = glue/multi_nli label id
IMDB_LABELS = ("negative", "positive")  # index = HF imdb label id
_GRADES = ("alias", "numeric", "choice")
_UNKNOWN = {"<unk>"}  # HF trivia_qa test rows carry this in place of an answer

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
    """Records of a file as dicts; None stands for a record that could not be parsed."""
    kind = kind or _kind(path)
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


# --------------------------------------------------------------------------- converters
# Each converter turns rows (from a file or from the hub) into questions on a builder.


def _snake(key: str) -> str:
    """TriviaQA's original CamelCase keys as the HF snake_case ones: QuestionId -> question_id."""
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", key).lower()


def _triviaqa_answers(answer: Any) -> list[str]:
    if not isinstance(answer, dict):
        return []
    answer = {_snake(k): v for k, v in answer.items()}
    for value_key, aliases_key in (
        ("value", "aliases"),
        ("normalized_value", "normalized_aliases"),
    ):
        golds = _texts([answer.get(value_key), *_listish(answer.get(aliases_key))])
        golds = [g for g in golds if g not in _UNKNOWN]
        if golds:
            return golds
    return []


def _convert_triviaqa(rows: Iterable[Row | None], b: _Builder) -> None:
    for i, raw in b.records(rows):
        row = {_snake(k): v for k, v in raw.items()}  # one code path for both schemas
        b.add(
            _row_id(row, ("question_id",), i),
            row.get("question"),
            _triviaqa_answers(row.get("answer")),
            task="triviaqa",
            skill="factual",
        )


_HTML_TAG = re.compile(r"</?[A-Za-z][^<>]*>")


def _nq_span(row: Row, start: Any, end: Any) -> str:
    """Document tokens [start, end) without HTML tags, as text ("" when out of range)."""
    if not (isinstance(start, int) and isinstance(end, int)):
        return ""
    text = row.get("document_text")
    if isinstance(text, str):  # simplified format: space-tokenised, tags inline
        tokens = text.split(" ")
        words = [t for t in tokens[start:end] if not _HTML_TAG.fullmatch(t)]
    else:  # full format: token dicts that flag HTML themselves
        tokens = row.get("document_tokens") or []
        words = [
            _text(t.get("token"))
            for t in tokens[start:end]
            if isinstance(t, dict) and not t.get("html_token")
        ]
    return " ".join(words) if 0 <= start < end <= len(tokens) else ""


def _nq_answers(row: Row) -> list[str]:
    golds: list[str] = []
    for ann in row.get("annotations") or []:
        if not isinstance(ann, dict):
            continue
        for span in ann.get("short_answers") or []:
            if isinstance(span, dict):
                golds.append(_nq_span(row, span.get("start_token"), span.get("end_token")))
        yes_no = _text(ann.get("yes_no_answer")).upper()
        if yes_no in ("YES", "NO"):  # the gold answer of a boolean question
            golds.append(yes_no.lower())
    return golds


def _convert_nq(rows: Iterable[Row | None], b: _Builder) -> None:
    for i, row in b.records(rows):
        if "question_text" in row:  # simplified (or full) Natural Questions
            qid, text, golds = row.get("example_id"), row["question_text"], _nq_answers(row)
        else:  # NQ-open: {"question", "answer": [...]}
            qid = _first(row, ("id", "example_id"))
            text, golds = row.get("question"), _listish(_first(row, ("answer", "answers")))
        b.add(_text(qid) or str(i), text, golds, task="nq", skill="factual")


def _convert_hotpotqa(rows: Iterable[Row | None], b: _Builder) -> None:
    for i, row in b.records(rows):
        b.add(
            _row_id(row, ("_id", "id"), i),
            row.get("question"),
            [row.get("answer")],
            task="hotpotqa",
            skill="multi_hop",
        )


_LABEL_ID = re.compile(r"\d+(\.0*)?")


def _label(
    value: Any, names: tuple[str, ...], words: Mapping[str, str] | None = None
) -> str | None:
    """A class name from an id (0, "1", "1.0" from pandas), a name, or a word in `words`;
    None when the value is not a label."""
    text = _text(value).lower()
    if _LABEL_ID.fullmatch(text):
        i = int(float(text))
        return names[i] if i < len(names) else None
    return text if text in names else (words or {}).get(text)


def _nli_question(premise: str, hypothesis: str) -> str:
    return (
        f'Premise: "{premise}"\nHypothesis: "{hypothesis}"\n'
        "Does the premise entail the hypothesis, contradict it, or neither? "
        "Answer with one word: entailment, neutral or contradiction."
    )


def _convert_mnli(rows: Iterable[Row | None], b: _Builder) -> None:
    for i, row in b.records(rows):
        premise = _text(_first(row, ("sentence1", "premise")))
        hypothesis = _text(_first(row, ("sentence2", "hypothesis")))
        raw = _first(row, ("gold_label", "label"))
        if not premise or not hypothesis:
            b.skip("empty_question")
        elif raw is None or _text(raw) in ("-", "-1"):  # no annotator majority / test set
            b.skip("no_gold_label")
        elif (label := _label(raw, NLI_LABELS)) is None:
            b.skip("bad_label")
        else:
            b.add(
                _row_id(row, ("pairID", "idx", "id"), i),
                _nli_question(premise, hypothesis),
                [label],
                task="mnli",
                skill="nli",
                grade="choice",
                options=NLI_LABELS,
            )


_SENTIMENT_WORDS = {"neg": "negative", "pos": "positive"}


def _imdb_question(review: str) -> str:
    review = re.sub(r"<br\s*/?>", "\n", review).strip()  # the reviews keep their HTML breaks
    return f"Review: {review}\nIs the sentiment of this movie review positive or negative?"


def _add_review(b: _Builder, qid: str, review: str, label: str) -> None:
    if not review.strip():
        b.skip("empty_text")
        return
    b.add(
        qid,
        _imdb_question(review),
        [label],
        task="imdb",
        skill="sentiment",
        grade="choice",
        options=IMDB_LABELS,
    )


def _convert_imdb(rows: Iterable[Row | None], b: _Builder) -> None:
    for i, row in b.records(rows):
        raw = _first(row, ("label", "sentiment"))
        if raw is None or _text(raw) == "-1":  # the "unsupervised" split has label -1
            b.skip("no_label")
        elif (label := _label(raw, IMDB_LABELS, _SENTIMENT_WORDS)) is None:
            b.skip("bad_label")
        else:
            _add_review(b, _row_id(row, ("id",), i), _text(_first(row, ("text", "review"))), label)


def _review_number(path: Path) -> tuple[int, str]:
    """aclImdb files are <id>_<rating>.txt: order by the numeric id, not as strings."""
    head = path.stem.split("_")[0]
    return (int(head) if head.isdigit() else -1, path.name)


def _acl_split_dirs(root: Path) -> list[Path]:
    """The split directories under an aclImdb root, or the root when it is one itself."""
    if (root / "pos").is_dir() or (root / "neg").is_dir():
        return [root]
    return sorted(p for p in root.iterdir() if (p / "pos").is_dir() or (p / "neg").is_dir())


def _convert_acl_imdb(root: Path, b: _Builder) -> None:
    splits = _acl_split_dirs(root)
    if not splits:
        raise ValueError(f"{root}: not an aclImdb directory (no <split>/pos or <split>/neg)")
    for split in splits:
        if (split / "unsup").is_dir():  # unlabelled reviews: counted, never used
            b.skip("no_label", sum(1 for _ in (split / "unsup").glob("*.txt")))
        by_label = {
            label: sorted((split / folder).glob("*.txt"), key=_review_number)
            for folder, label in (("neg", "negative"), ("pos", "positive"))
        }
        # Interleave the classes so that a `limit` keeps both of them.
        for pair in _interleave(by_label["negative"], by_label["positive"]):
            if b.full:
                return
            path, label = pair
            qid = f"{split.name}/{path.parent.name}/{path.stem}"
            try:
                review = path.read_text(encoding="utf-8")
            except UnicodeDecodeError:
                b.skip("bad_encoding")
                continue
            _add_review(b, qid, review, label)


def _interleave(neg: list[Path], pos: list[Path]) -> Iterator[tuple[Path, str]]:
    for i in range(max(len(neg), len(pos))):
        if i < len(neg):
            yield neg[i], "negative"
        if i < len(pos):
            yield pos[i], "positive"


def _winogrande_question(sentence: str, option1: str, option2: str) -> str:
    return f"{sentence}\nWho or what does the blank (_) refer to: {option1} or {option2}?"


def _convert_winogrande(rows: Iterable[Row | None], b: _Builder) -> None:
    for i, row in b.records(rows):
        sentence = _text(row.get("sentence"))
        options = (_text(row.get("option1")), _text(row.get("option2")))
        answer = _text(row.get("answer"))
        if not sentence:
            b.skip("empty_question")
        elif "_" not in sentence:
            b.skip("no_blank")
        elif not answer:  # the test split ships without answers
            b.skip("no_answer")
        elif answer not in ("1", "2"):
            b.skip("bad_label")
        else:
            b.add(
                _row_id(row, ("qID", "id"), i),
                _winogrande_question(sentence, *options),
                [options[int(answer) - 1]],
                task="winogrande",
                skill="commonsense",
                grade="choice",
                options=options,
            )


_REF_QUESTION = ("raw_question", "question", "Question")
_REF_ANSWER = ("correct_answer", "answer", "answers", "Answer")
_REF_WRONG = ("incorrect_answer", "Wrong_Answer", "wrong_answer")
_REF_ORIGIN = ("origin", "Origin")


def _by_position(text: str, options: list[str]) -> list[str]:
    """Options in the order the question mentions them, so the gold is not always first."""
    folded = text.casefold()

    def where(option: str) -> int:
        at = folded.find(option.casefold())
        return at if at >= 0 else len(folded)

    return sorted(options, key=where)


def _convert_reference(rows: Iterable[Row | None], b: _Builder) -> None:
    checked = False
    for i, row in b.records(rows):
        if not checked:
            _require_column(row, _REF_QUESTION, "question", b.source)
            _require_column(row, _REF_ANSWER, "answer", b.source)
            checked = True
        text = _text(_first(row, _REF_QUESTION))
        raw = _listish(_first(row, _REF_ANSWER))
        golds, wrong = _texts(raw), _text(_first(row, _REF_WRONG))
        grade: GradeKind = "alias"
        options: Sequence[str] = ()
        skill = "factual"
        if _text(_first(row, _REF_ORIGIN)).lower() in ("mnli", "snli"):
            grade, options, skill = "choice", NLI_LABELS, "nli"
            golds = [g.lower() for g in golds]
        elif wrong and golds:  # winogrande-style files: one right and one wrong option
            grade, options, skill = "choice", _by_position(text, [golds[0], wrong]), "commonsense"
        elif raw and all(map(_is_number, raw)):  # AnswerableMath: "[21.0]"
            grade = "numeric"
        b.add(
            _row_id(row, ("id",), i),
            text,
            golds,
            task=_text(row.get("task")) or "reference_csv",
            skill=_text(row.get("skill")) or skill,
            grade=grade,
            options=options,
        )


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


def load_triviaqa(path: PathLike, *, limit: int | None = None) -> QADataset:
    """TriviaQA: the original {"Data": [...]} json or HF trivia_qa rows; gold = value + aliases."""
    return _load_file("triviaqa", path, _convert_triviaqa, limit)


def load_nq(path: PathLike, *, limit: int | None = None) -> QADataset:
    """Natural Questions simplified jsonl(.gz) or NQ-open rows; yes/no answers become "yes"/"no"."""
    return _load_file("nq", path, _convert_nq, limit)


def load_hotpotqa(path: PathLike, *, limit: int | None = None) -> QADataset:
    """HotpotQA: the original json list ("_id") or HF hotpot_qa rows ("id")."""
    return _load_file("hotpotqa", path, _convert_hotpotqa, limit)


def load_mnli(path: PathLike, *, limit: int | None = None) -> QADataset:
    """MNLI: multinli_1.0 jsonl ("-" gold labels skipped) or HF glue/multi_nli rows."""
    return _load_file("mnli", path, _convert_mnli, limit, candidates=NLI_LABELS)


def load_imdb(path: PathLike, *, limit: int | None = None) -> QADataset:
    """IMDB: an aclImdb directory (a root with train/test, or one split) or HF imdb rows."""
    p = _existing(path, "imdb")
    if not p.is_dir():
        return _load_file("imdb", p, _convert_imdb, limit, candidates=IMDB_LABELS)
    b = _Builder("imdb", str(p), limit, IMDB_LABELS)
    _convert_acl_imdb(p, b)
    return b.build()


def load_winogrande(path: PathLike, *, limit: int | None = None) -> QADataset:
    """Winogrande jsonl (or HF rows): two options, the gold one picked by answer "1"/"2"."""
    return _load_file("winogrande", path, _convert_winogrande, limit)


def load_reference_csv(path: PathLike, *, limit: int | None = None) -> QADataset:
    """A CSV of the LLMsKnow reference implementation (its data/ inputs or output/ answers).

    Question from raw_question/question/Question, gold from correct_answer/answer/answers/
    Answer (list literals parsed). Rows with an mnli/snli origin become NLI choice questions,
    rows with a wrong answer (winogrande) two-option choice questions, numeric lists numeric.
    """
    return _load_file("reference_csv", path, _convert_reference, limit, kind="csv")


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
    """
    if isinstance(data, (str, Path)):
        return _load_file("user", data, _convert_user, limit, kind=kind)
    b = _Builder("user", "<list>", limit)
    _convert_user(data, b)
    return b.build()


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
    """Load `format:path` (e.g. "triviaqa:data/unfiltered-web-dev.json"), a user-data file
    path, or a list of user records. Built-in task names are not handled here."""
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


# --------------------------------------------------------------------------- the hub

# Our format name -> (hub repository, config): the HF versions of the paper's datasets.
HUB_DATASETS: dict[str, tuple[str, str | None]] = {
    "triviaqa": ("mandarjoshi/trivia_qa", "rc.nocontext"),
    "nq": ("google-research-datasets/nq_open", None),
    "hotpotqa": ("hotpotqa/hotpot_qa", "distractor"),
    "mnli": ("nyu-mll/glue", "mnli"),
    "imdb": ("stanfordnlp/imdb", None),
    "winogrande": ("allenai/winogrande", "winogrande_xl"),
}
_HUB_SPLITS = {"mnli": {"validation": "validation_matched", "test": "test_matched"}}
_HUB_CONVERTERS: dict[str, tuple[Converter, tuple[str, ...]]] = {
    "triviaqa": (_convert_triviaqa, ()),
    "nq": (_convert_nq, ()),
    "hotpotqa": (_convert_hotpotqa, ()),
    "mnli": (_convert_mnli, NLI_LABELS),
    "imdb": (_convert_imdb, IMDB_LABELS),
    "winogrande": (_convert_winogrande, ()),
}
# Accept our names, the repository ids and their short names ("trivia_qa", "glue"...).
_HUB_NAMES = {
    alias: fmt
    for fmt, (repo, _) in HUB_DATASETS.items()
    for alias in (fmt, repo, repo.rsplit("/", 1)[-1])
}


def _env_true(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def hub_reachable(timeout: float = 3.0) -> bool:
    """False when offline mode is set or the hub endpoint does not answer within `timeout`."""
    if _env_true("HF_HUB_OFFLINE") or _env_true("HF_DATASETS_OFFLINE"):
        return False
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    try:
        with urllib.request.urlopen(
            urllib.request.Request(endpoint, method="HEAD"), timeout=timeout
        ):
            return True
    except urllib.error.HTTPError:
        return True  # an HTTP error status is still an answer
    except (OSError, ValueError):
        return False


def load_hub(name: str, split: str, *, limit: int | None = None) -> QADataset:
    """The HF hub version of a dataset, through `datasets.load_dataset`, when reachable.

    `name` is a format name ("triviaqa") or the hub name ("trivia_qa"). Raises RuntimeError
    when the hub is unreachable: download the files and use `load_dataset_spec("fmt:path")`.
    """
    fmt = _HUB_NAMES.get(name)
    if fmt is None:
        raise ValueError(f"unknown hub dataset {name!r}; known: {', '.join(HUB_DATASETS)}")
    repo, config = HUB_DATASETS[fmt]
    if not hub_reachable():
        raise RuntimeError(
            f"the Hugging Face hub is unreachable (offline or no network), so {repo} cannot be "
            f"loaded; download it and pass a local path as '{fmt}:<path>' instead"
        )
    from datasets import load_dataset  # heavy import: only when the hub is used

    hub_split = _HUB_SPLITS.get(fmt, {}).get(split, split)
    # Streaming reads only the first rows when a limit is given.
    rows = load_dataset(repo, config, split=hub_split, streaming=limit is not None)
    convert, candidates = _HUB_CONVERTERS[fmt]
    b = _Builder(
        fmt, f"hf:{repo}" + (f"/{config}" if config else "") + f"[{hub_split}]", limit, candidates
    )
    convert(rows, b)
    return b.build()
