"""`AnswerRun`: the result of `answer_questions`, and its files.

What every later step reads: the records (one `AnswerRecord` per answer) and the summary, with
the result protocol of `tl_truth.results` (markdown, a DataFrame, a plot) and the files
generations.jsonl (one record a line) and summary.json. Making a run is `tl_truth.answers.run`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from tl_truth.answers.record import AnswerRecord
from tl_truth.result_io import read_json_file
from tl_truth.results import Result, pyplot_axes

GENERATIONS_FILE = "generations.jsonl"
SUMMARY_FILE = "summary.json"
FIGURE_FILE = "summary.png"  # written only by `AnswerRun.save(..., figure=True)`


@dataclass
class AnswerRun(Result):
    """Graded generations with exact-answer spans: one `AnswerRecord` per generations.jsonl line.

    `records` are kept at full precision (token log-probabilities as computed); `summary` is
    the run's summary.json document (`summarize` plus model, prompt format, generation settings
    and timings; its rates are rounded as written). Plain dicts passed in `records` are read
    into `AnswerRecord`s.

    The result protocol (`tl_truth.results.Result`), except for the files: `save(dir)` writes
    generations.jsonl and summary.json (the figure only on request) and `load(dir)` reads them.

    Args:
        records: one `AnswerRecord` (or generations.jsonl dict) per answer.
        summary: the summary.json document (see `tl_truth.answers.summary.summarize`).

    >>> import tempfile
    >>> from tl_truth.answers import GenerationConfig, answer_questions
    >>> from tl_truth.data import load_questions
    >>> from tl_truth.testing import tiny_model
    >>> run = answer_questions(tiny_model("llama"), load_questions("capitals", limit=2),
    ...                        GenerationConfig(max_new_tokens=8), extract_with_model=False,
    ...                        progress=False)
    >>> len(run), run.summary["n"], run.records[0]["task"]
    (2, 2, 'capitals')
    >>> run.to_dataframe().shape[0]
    2
    >>> with tempfile.TemporaryDirectory() as d:
    ...     back = AnswerRun.load(run.save(d))
    >>> back.records == run.records
    True
    """

    records: list[AnswerRecord]
    summary: dict = field(default_factory=dict)

    result_name = "summary"

    def __post_init__(self) -> None:
        if not (
            isinstance(self.records, list)
            and all(isinstance(r, AnswerRecord) for r in self.records)
        ):
            self.records = [
                r if isinstance(r, AnswerRecord) else AnswerRecord.from_dict(r)
                for r in self.records
            ]

    def __len__(self) -> int:
        return len(self.records)

    def to_dict(self) -> dict:
        """`{"summary": ..., "records": [...]}`, every record a plain dict (`to_dict()`)."""
        return {"summary": self.summary, "records": [r.to_dict() for r in self.records]}

    @classmethod
    def from_dict(cls, d: Mapping) -> AnswerRun:
        """The inverse of `to_dict`."""
        return cls(list(d["records"]), dict(d.get("summary", {})))

    def to_dataframe(self):
        """One row per record, one column per generations.jsonl key."""
        import pandas as pd

        return pd.DataFrame([r.to_dict() for r in self.records])

    def _per_task(self) -> dict[str, dict]:
        tasks = sorted({r["task"] for r in self.records})
        return {t: _rates([r for r in self.records if r["task"] == t]) for t in tasks}

    def title(self) -> str:
        name = self.summary.get("model", {}).get("name", "")
        return f"Answers{f' of {name}' if name else ''}: {len(self)} records"

    def markdown_frame(self):
        """Overall and per task: n, accuracy, exact-answer rate, refusal rate."""
        import pandas as pd

        rows = {"all": _rates(self.records), **self._per_task()}
        return pd.DataFrame(
            [
                {
                    "task": task,
                    "n": r["n"],
                    "accuracy": r["accuracy"],
                    "exact answer located": r["exact_answer_rate"],
                    "refusals": r["refusal_rate"],
                }
                for task, r in rows.items()
            ]
        )

    @property
    def figsize(self) -> tuple[float, float]:  # type: ignore[override]
        return (1.2 + 1.1 * max(1, len({r["task"] for r in self.records})), 3.0)

    def plot(self, ax=None):
        """Accuracy and exact-answer rate per task (a new pyplot figure only when `ax` is None)."""
        per_task = self._per_task()
        ax = pyplot_axes(ax, self.figsize)
        x = np.arange(len(per_task))
        for i, (key, label) in enumerate(
            (("accuracy", "accuracy"), ("exact_answer_rate", "exact-answer rate"))
        ):
            ax.bar(x + (i - 0.5) * 0.4, [v[key] for v in per_task.values()], 0.4, label=label)
        ax.set_xticks(x, list(per_task))
        ax.set_ylim(0, 1)
        ax.legend()
        ax.set_title(f"{self.summary.get('model', {}).get('name', '')}: greedy answers")
        return ax

    def save(self, out_dir: str | Path, figure: bool = False) -> Path:
        """Write generations.jsonl (one record a line) and summary.json; returns `out_dir`.

        `figure=True` also writes summary.png (`plot`), drawn on a standalone Figure
        (`Result.figure()`): no pyplot state, the matplotlib backend untouched.

        Args:
            out_dir: the directory (created if needed).
            figure: also write summary.png.

        Returns:
            `out_dir` as a `Path`.
        """
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        tmp = out / (GENERATIONS_FILE + ".tmp")
        with tmp.open("w") as f:
            for r in self.records:
                d = r.to_dict() if isinstance(r, AnswerRecord) else dict(r)
                f.write(json.dumps(d, ensure_ascii=False) + "\n")
        tmp.replace(out / GENERATIONS_FILE)
        (out / SUMMARY_FILE).write_text(json.dumps(self.summary, indent=2, ensure_ascii=False))
        if figure:
            self.figure().savefig(out / FIGURE_FILE, dpi=self.dpi, bbox_inches="tight")
        return out

    @classmethod
    def load(cls, out_dir: str | Path) -> AnswerRun:
        """Read a directory written by `save` (or by any earlier version: the lines are the
        same); a line that is not a record raises ValueError naming the file and line.

        Args:
            out_dir: a directory holding generations.jsonl (and summary.json, if written).

        Returns:
            The `AnswerRun` (an empty summary when summary.json is missing).
        """
        out = Path(out_dir)
        records = read_records(out / GENERATIONS_FILE)
        summary_path = out / SUMMARY_FILE
        summary = read_json_file(summary_path) if summary_path.exists() else {}
        return cls(records, summary)


def read_records(path: str | Path) -> list[AnswerRecord]:
    """The records of a generations.jsonl file (blank lines skipped).

    Raises ValueError "<path>:<line>: ..." for a line that is not JSON or not a record.
    """
    path = Path(path)
    records = []
    with path.open() as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                records.append(AnswerRecord.from_dict(json.loads(line)))
            except ValueError as e:  # json.JSONDecodeError is a ValueError
                raise ValueError(f"{path}:{lineno}: not a valid answer record: {e}") from e
    return records


def _rates(rs: Sequence[Mapping]) -> dict:
    n = len(rs)

    def rate(k: int) -> float:
        return k / n if n else float("nan")

    return {
        "n": n,
        "accuracy": rate(sum(bool(r.get("correct")) for r in rs)),
        "exact_answer_rate": rate(sum(r.get("exact_answer_token_span") is not None for r in rs)),
        "refusal_rate": rate(sum(r.get("category") == "refusal" for r in rs)),
    }
