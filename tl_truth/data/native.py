"""The paper's datasets in their native file formats: TriviaQA, NQ, HotpotQA, MNLI, IMDB...

Orgad et al. (2024) probe ten datasets; each ships in its own format (and again in another one
on the Hugging Face hub). This module holds one converter per format, from rows to questions
(the same converter serves the local files and the hub rows of `tl_truth.data.hub`), and the
`load_<format>(path)` functions over local files. The table of formats is in
`tl_truth.data.loaders`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from tl_truth.data.questions import GradeKind, QADataset
from tl_truth.data.rows import (
    PathLike,
    Row,
    _Builder,
    _existing,
    _first,
    _is_number,
    _listish,
    _load_file,
    _require_column,
    _row_id,
    _text,
    _texts,
)

__all__ = [
    "IMDB_LABELS",
    "NLI_LABELS",
    "load_hotpotqa",
    "load_imdb",
    "load_mnli",
    "load_nq",
    "load_reference_csv",
    "load_triviaqa",
    "load_winogrande",
]

NLI_LABELS = ("entailment", "neutral", "contradiction")  # index = glue/multi_nli label id
IMDB_LABELS = ("negative", "positive")  # index = HF imdb label id
_UNKNOWN = {"<unk>"}  # HF trivia_qa test rows carry this in place of an answer


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
