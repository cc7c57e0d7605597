"""Questions: the unit of everything downstream.

A `Question` carries its gold answers (first = canonical, the rest aliases), the task and
skill it belongs to, how it is graded, and a deterministic train/test split derived from its
id, so the same question lands in the same split in every run and every process.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Literal

Split = Literal["train", "test"]
GradeKind = Literal["alias", "numeric", "choice"]

TEST_FRACTION = 0.3


def split_for(qid: str, test_fraction: float = TEST_FRACTION) -> Split:
    """Deterministic split from a stable hash of the id (not Python's salted `hash`).

    Args:
        qid: the key to hash; `make_question` passes ``"task/id"``.
        test_fraction: the share of keys that land in "test" (0.3 by default).

    Returns:
        "train" or "test", the same for the same `qid` in every run and process.

    >>> split_for("capitals/FR"), split_for("capitals/DE")
    ('train', 'test')
    >>> split_for("capitals/DE", test_fraction=0.0)
    'train'
    """
    bucket = int.from_bytes(hashlib.sha1(qid.encode("utf-8")).digest()[:4], "big") / 2**32
    return "test" if bucket < test_fraction else "train"


@dataclass(frozen=True)
class Question:
    """One question with its gold answers; build it with `make_question`.

    Args:
        id: unique within its task (the native id of the source, or a row index).
        question: the question text, as it goes into the prompt template.
        answers: the gold answers, canonical first, then aliases (at least one, non-empty).
        task: the task (dataset slice) it belongs to, e.g. "capitals".
        skill: what the task tests: "factual", "arithmetic", "nli", ...
        grade: how answers are graded: "alias", "numeric" or "choice".
        options: the options of a multiple-choice question, in prompt order.
        split: "train" or "test" (`make_question` derives it from a hash of ``task/id``).
        case_sensitive: answers must match case (chemical symbols: "In" is not "in").

    >>> q = Question("7", "What is 3 + 4?", ("7",), "arithmetic", "arithmetic", grade="numeric")
    >>> q.gold, q.split
    ('7', 'train')
    """

    id: str
    question: str
    answers: tuple[str, ...]
    task: str
    skill: str
    grade: GradeKind = "alias"
    options: tuple[str, ...] = ()  # multiple choice only: the options, in prompt order
    split: Split = field(default="train")
    case_sensitive: bool = False  # symbols ("In", "Co") must match case, words need not

    def __post_init__(self) -> None:
        if not self.id:
            raise ValueError("Question.id must be a non-empty string")
        if not self.question or not self.question.strip():
            raise ValueError(f"Question {self.id!r} has empty text")
        if not self.answers or not all(isinstance(a, str) and a.strip() for a in self.answers):
            raise ValueError(f"Question {self.id!r} needs at least one non-empty gold answer")
        if self.grade == "choice" and not self.options:
            raise ValueError(f"Question {self.id!r} is multiple choice but has no options")

    @property
    def gold(self) -> str:
        """The canonical gold answer, `answers[0]`."""
        return self.answers[0]

    def to_dict(self) -> dict:
        """The fields as a JSON-ready dict (tuples become lists)."""
        d = asdict(self)
        d["answers"] = list(self.answers)
        d["options"] = list(self.options)
        return d


def make_question(
    id: str,
    question: str,
    answers: Sequence[str] | str,
    task: str,
    skill: str,
    grade: GradeKind = "alias",
    options: Sequence[str] = (),
    split: Split | None = None,
    case_sensitive: bool = False,
) -> Question:
    """Build a Question, deduplicating aliases (order kept) and assigning the hashed split.

    Args:
        id: unique within the task.
        question: the question text (stripped).
        answers: the gold answer, or a list of them with the canonical one first; aliases are
            stripped and deduplicated case-insensitively, keeping the first spelling.
        task: the task name, e.g. "capitals".
        skill: what the task tests, e.g. "factual".
        grade: "alias" (default), "numeric" or "choice" (which needs `options`).
        options: the options of a multiple-choice question.
        split: force "train" or "test"; None (default) hashes ``task/id`` (`split_for`).
        case_sensitive: answers must match case when graded.

    Returns:
        A frozen `Question`.

    Raises:
        ValueError: empty id or text, no non-empty answer, or "choice" without options.

    >>> q = make_question("FR", "What is the capital of France?", ["Paris", "paris"],
    ...                   "capitals", "factual")
    >>> q.answers, q.gold, q.split
    (('Paris',), 'Paris', 'train')
    """
    if isinstance(answers, str):
        answers = [answers]
    seen: dict[str, None] = {}
    for a in answers:
        a = str(a).strip()
        if a and a.casefold() not in {s.casefold() for s in seen}:
            seen[a] = None
    return Question(
        id=str(id),
        question=question.strip(),
        answers=tuple(seen),
        task=task,
        skill=skill,
        grade=grade,
        options=tuple(options),
        split=split or split_for(f"{task}/{id}"),
        case_sensitive=case_sensitive,
    )


@dataclass
class QADataset:
    """A named list of questions plus the task's candidate answers.

    `candidates` is the answer vocabulary of the task (every country name for `city_country`,
    every symbol for `elements`...): it lets us locate the exact answer inside a *wrong*
    generation, where no gold alias appears. Indexing gives a `Question`, slicing a
    `QADataset`; `train` and `test` are the hashed splits.

    Args:
        name: the dataset's name ("capitals", "triviaqa", "capitals,arithmetic"...).
        questions: the questions, in the dataset's (stable) order.
        candidates: the task's answer vocabulary (may be empty).
        source: where the questions came from, for reports.
        skipped: reason -> count of the source records that did not become questions.
        task_candidates: per-task vocabularies of a mixed dataset (see `candidates_for`).

    >>> ds = QADataset("demo", [
    ...     make_question("FR", "What is the capital of France?", "Paris", "capitals", "factual"),
    ...     make_question("DE", "What is the capital of Germany?", "Berlin", "capitals", "factual"),
    ... ], candidates=("Paris", "Berlin"))
    >>> len(ds), ds[0].gold, ds[1:].name
    (2, 'Paris', 'demo')
    >>> len(ds.train), ds.test.name
    (1, 'demo[test]')
    """

    name: str
    questions: list[Question]
    candidates: tuple[str, ...] = ()
    source: str = ""
    skipped: dict[str, int] = field(default_factory=dict)  # reason -> count, never silent
    task_candidates: dict[str, tuple[str, ...]] = field(default_factory=dict)

    def candidates_for(self, task: str) -> tuple[str, ...]:
        """Candidates of one task: a mixed dataset must not match one task's vocabulary
        (element symbols such as "In") inside another task's answers.

        Args:
            task: a task name of this dataset's questions.

        Returns:
            That task's candidates, or `candidates` when the dataset has no per-task ones.
        """
        return self.task_candidates.get(task, self.candidates)

    def __len__(self) -> int:
        return len(self.questions)

    def __iter__(self) -> Iterator[Question]:
        return iter(self.questions)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return self.subset(self.questions[i])
        return self.questions[i]

    def subset(self, questions: Sequence[Question], name: str | None = None) -> "QADataset":
        """Some of these questions, keeping the candidates, source and skip counts.

        Args:
            questions: the questions to keep (any order).
            name: the new dataset's name; None keeps this one's.

        Returns:
            A new `QADataset`.
        """
        return QADataset(
            self.name if name is None else name,
            list(questions),
            self.candidates,
            self.source,
            dict(self.skipped),
            dict(self.task_candidates),
        )

    def split(self, which: Split) -> "QADataset":
        """The questions of one split ("train" or "test"), named ``name[which]``."""
        return self.subset([q for q in self.questions if q.split == which], f"{self.name}[{which}]")

    @property
    def train(self) -> "QADataset":
        """The train split (`split("train")`)."""
        return self.split("train")

    @property
    def test(self) -> "QADataset":
        """The test split (`split("test")`)."""
        return self.split("test")

    def limit(self, n: int | None) -> "QADataset":
        """The first n questions, in the dataset's (stable) order.

        Args:
            n: how many to keep; None keeps them all (and returns this dataset).

        Returns:
            A `QADataset` of at most `n` questions.
        """
        return self if n is None else self[:n]

    def to_dataframe(self):
        """One row per question, one column per `Question` field."""
        import pandas as pd

        return pd.DataFrame([q.to_dict() for q in self.questions])

    @staticmethod
    def concat(name: str, parts: Sequence["QADataset"]) -> "QADataset":
        """Several datasets as one, keeping each task's candidates apart.

        Args:
            name: the new dataset's name.
            parts: the datasets, in order.

        Returns:
            A `QADataset` whose `task_candidates` hold each task's vocabulary and whose
            `skipped` keys are prefixed by the part's name (``"triviaqa:no_answer"``).
        """
        qs: list[Question] = []
        per_task: dict[str, tuple[str, ...]] = {}
        skipped: dict[str, int] = {}
        for p in parts:
            qs.extend(p.questions)
            for task in {q.task for q in p.questions}:
                per_task[task] = tuple(
                    dict.fromkeys(per_task.get(task, ()) + p.candidates_for(task))
                )
            for k, v in p.skipped.items():
                skipped[f"{p.name}:{k}"] = skipped.get(f"{p.name}:{k}", 0) + v
        return QADataset(name, qs, (), ",".join(p.source for p in parts), skipped, per_task)
