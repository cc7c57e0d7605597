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
    """Deterministic split from a stable hash of the id (not Python's salted `hash`)."""
    bucket = int.from_bytes(hashlib.sha1(qid.encode("utf-8")).digest()[:4], "big") / 2**32
    return "test" if bucket < test_fraction else "train"


@dataclass(frozen=True)
class Question:
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
        return self.answers[0]

    def to_dict(self) -> dict:
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
    """Build a Question, deduplicating aliases (order kept) and assigning the hashed split."""
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
    generation, where no gold alias appears.
    """

    name: str
    questions: list[Question]
    candidates: tuple[str, ...] = ()
    source: str = ""
    skipped: dict[str, int] = field(default_factory=dict)  # reason -> count, never silent
    task_candidates: dict[str, tuple[str, ...]] = field(default_factory=dict)

    def candidates_for(self, task: str) -> tuple[str, ...]:
        """Candidates of one task: a mixed dataset must not match one task's vocabulary
        (element symbols such as "In") inside another task's answers."""
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
        """Some of these questions, keeping the candidates, source and skip counts."""
        return QADataset(
            self.name if name is None else name,
            list(questions),
            self.candidates,
            self.source,
            dict(self.skipped),
            dict(self.task_candidates),
        )

    def split(self, which: Split) -> "QADataset":
        return self.subset([q for q in self.questions if q.split == which], f"{self.name}[{which}]")

    @property
    def train(self) -> "QADataset":
        return self.split("train")

    @property
    def test(self) -> "QADataset":
        return self.split("test")

    def limit(self, n: int | None) -> "QADataset":
        """The first n questions, in the dataset's (stable) order."""
        return self if n is None else self[:n]

    def to_dataframe(self):
        import pandas as pd

        return pd.DataFrame([q.to_dict() for q in self.questions])

    @staticmethod
    def concat(name: str, parts: Sequence["QADataset"]) -> "QADataset":
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
