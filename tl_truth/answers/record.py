"""`AnswerRecord`: one graded answer with its exact-answer span, typed, and still a mapping.

One record per (question, sample) is one line of `generations.jsonl`. The record is a
dataclass with one typed field per key of that line, and it also behaves like the dict the line
used to be (`r["correct"]`, `r.get(...)`, `"probe_score" in r`, `r["probe_score"] = v`,
`{**r}`, `dict(r)`), so code written against the dicts keeps working. Keys that later steps add
(a probe score, a cluster, ...) are kept, in the order they were added, in `extra`.

`to_dict()` gives the line back as a plain dict, keys in the file's order, so
`json.dumps(r.to_dict(), ensure_ascii=False)` is byte for byte the line `build_record` always
wrote, and `AnswerRecord.from_dict(r.to_dict()) == r` for every record.

Token coordinates: every token span is `[start, end)` into the full sequence the model saw,
`prompt_token_ids + answer_token_ids` (so the first answer token is at `len(prompt_token_ids)`);
character spans are `[start, end)` into `answer`.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Mapping, MutableMapping
from dataclasses import dataclass, field, fields
from typing import Any


@dataclass(eq=False)
class AnswerRecord(MutableMapping):
    """One answer to one question: the generation, its grade and where its exact answer is.

    The fields come in groups: identity (id, task, skill, split), question and prompt
    (question, prompt, gold, gold_aliases), generation (answer, prompt_token_ids,
    answer_token_ids, token_logprobs, stop_reason, sample_index), grade (correct, category,
    grade_reason) and exact answer (the short answer inside `answer`, `exact_answer_*`).

    Args:
        id: the question's id (unique within a task).
        task: the task (dataset slice) the question belongs to.
        skill: the skill the task tests ("factual", "arithmetic", ...).
        split: "train" or "test", derived from a hash of `id` (stable across runs).
        question: the question text.
        prompt: the full prompt string fed to the model (template applied).
        gold: the canonical gold answer (`gold_aliases[0]`).
        gold_aliases: every accepted gold answer, canonical first.
        answer: the generated text, decoded from `answer_token_ids` (stop token excluded).
        correct: True only when `category == "correct"` (refusals are False).
        category: "correct" | "incorrect" | "refusal".
        grade_reason: short human-readable explanation of the grade.
        exact_answer: the exact substring of `answer`, or None when none was located.
        exact_answer_source: how it was found: "gold_alias" | "candidate" | "number" |
            "option" | "model" | "none".
        exact_answer_reason: how it was found, or why not ("refusal", "no_match", ...).
        exact_answer_char_span: `[start, end)` character span into `answer`
            (`answer[start:end] == exact_answer`), or None.
        exact_answer_token_span: `[start, end)` token span into
            `prompt_token_ids + answer_token_ids` covering the exact answer (so
            `len(prompt_token_ids) <= start < end <= len(full)`), or None.
        exact_answer_token_text: those tokens decoded (contains `exact_answer`), or None.
        prompt_token_ids: the prompt's token ids exactly as the model saw them (unpadded).
        answer_token_ids: the generated token ids, without the stop token.
        token_logprobs: log-probability of each generated token, aligned with
            `answer_token_ids` (full precision).
        stop_reason: "eos" | "newline" | "max_tokens".
        sample_index: 0 for the greedy answer; 0..K-1 for the K samples of a question.
        extra: keys added by later steps (e.g. "probe_score", "cluster"), in the order they
            were added; written after the fields above. `r[key]` reads and writes them like
            any other key.

    A record read from a hand-made or partial line may lack some of the fields above: those
    keys are absent from the mapping (`key in r` is False, `r[key]` raises KeyError, `to_dict()`
    omits them) and their attributes hold the defaults shown in the signature. Only `id` and
    `task` are required.

    >>> r = AnswerRecord.from_dict({"id": "FR", "task": "capitals", "answer": "Paris.",
    ...                             "correct": True})
    >>> r["correct"], r.correct, "gold" in r, list(r)
    (True, True, False, ['id', 'task', 'answer', 'correct'])
    >>> r["probe_score"] = 0.9  # a key a later step adds
    >>> r.to_dict()
    {'id': 'FR', 'task': 'capitals', 'answer': 'Paris.', 'correct': True, 'probe_score': 0.9}
    """

    id: str
    task: str
    skill: str = ""
    split: str = ""
    question: str = ""
    prompt: str = ""
    gold: str = ""
    gold_aliases: list[str] = field(default_factory=list)
    answer: str = ""
    correct: bool = False
    category: str = ""
    grade_reason: str = ""
    exact_answer: str | None = None
    exact_answer_source: str = "none"
    exact_answer_reason: str = ""
    exact_answer_char_span: list[int] | None = None
    exact_answer_token_span: list[int] | None = None
    exact_answer_token_text: str | None = None
    prompt_token_ids: list[int] = field(default_factory=list)
    answer_token_ids: list[int] = field(default_factory=list)
    token_logprobs: list[float] = field(default_factory=list)
    stop_reason: str = ""
    sample_index: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        clash = [k for k in self.extra if k in _FIELD_SET]
        if clash:
            raise ValueError(f"extra keys {clash} are record fields: set them as fields")
        self._absent: set[str] = set()

    # -- JSON ----------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """The generations.jsonl line as a plain dict: fields in file order, then `extra`."""
        absent = self._absent
        d = {k: getattr(self, k) for k in RECORD_KEYS if k not in absent}
        d.update(self.extra)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> AnswerRecord:
        """A record from a generations.jsonl line (or any mapping with at least id and task).

        Field values are type-checked (JSON types) and kept as they are; unknown keys go to
        `extra` in their order. Raises ValueError naming the offending key.
        """
        if isinstance(d, AnswerRecord):
            return d.copy()
        if not isinstance(d, Mapping):
            raise ValueError(f"a record must be a JSON object, got {type(d).__name__}")
        missing = [k for k in _REQUIRED if k not in d]
        if missing:
            raise ValueError(f"record lacks required key(s) {missing}")
        known: dict[str, Any] = {}
        extra: dict[str, Any] = {}
        for k, v in d.items():
            if k in _FIELD_SET:
                _check(k, v)
                known[k] = v
            else:
                extra[k] = v
        rec = cls(**known, extra=extra)
        if len(known) < len(RECORD_KEYS):
            rec._absent = {k for k in RECORD_KEYS if k not in known}
        return rec

    # -- mapping protocol: the record reads and writes like the dict it used to be ---------

    def __getitem__(self, key: str) -> Any:
        if key in _FIELD_SET:
            if key in self._absent:
                raise KeyError(key)
            return getattr(self, key)
        return self.extra[key]

    def __setitem__(self, key: str, value: Any) -> None:
        if key in _FIELD_SET:
            setattr(self, key, value)
            self._absent.discard(key)
        else:
            self.extra[key] = value

    def __delitem__(self, key: str) -> None:
        if key in _FIELD_SET:
            if key in self._absent:
                raise KeyError(key)
            setattr(self, key, _default(key))
            self._absent.add(key)
        else:
            del self.extra[key]

    def __iter__(self) -> Iterator[str]:
        absent = self._absent
        yield from (k for k in RECORD_KEYS if k not in absent)
        yield from self.extra

    def __len__(self) -> int:
        return len(RECORD_KEYS) - len(self._absent) + len(self.extra)

    def __contains__(self, key: object) -> bool:
        if key in _FIELD_SET:
            return key not in self._absent
        return key in self.extra

    def get(self, key: str, default: Any = None) -> Any:
        if key in _FIELD_SET:
            return default if key in self._absent else getattr(self, key)
        return self.extra.get(key, default)

    def __eq__(self, other: object) -> bool:
        """Equal to another record or a mapping with the same keys and values (like a dict)."""
        if isinstance(other, AnswerRecord):
            return self.to_dict() == other.to_dict()
        if isinstance(other, Mapping):
            return self.to_dict() == dict(other)
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]  # mutable, like a dict

    def copy(self) -> AnswerRecord:
        """A shallow copy (like `dict.copy`): new `extra`, shared field values."""
        new = copy.copy(self)
        new.extra = dict(self.extra)
        new._absent = set(self._absent)
        return new

    def __or__(self, other: object) -> dict[str, Any]:
        """`record | mapping` -> a plain dict, like `dict | dict`."""
        if not isinstance(other, Mapping):
            return NotImplemented
        return self.to_dict() | dict(other)

    def __ror__(self, other: object) -> dict[str, Any]:
        if not isinstance(other, Mapping):
            return NotImplemented
        return dict(other) | self.to_dict()

    def __ior__(self, other: Any) -> AnswerRecord:
        self.update(other)
        return self


RECORD_KEYS: tuple[str, ...] = tuple(f.name for f in fields(AnswerRecord) if f.name != "extra")
"""The fields in generations.jsonl order (the order `build_record` has always written)."""

_FIELD_SET = frozenset(RECORD_KEYS)
_REQUIRED = ("id", "task")
_DEFAULTS = {f.name: f for f in fields(AnswerRecord)}


def _default(name: str) -> Any:
    f = _DEFAULTS[name]
    return f.default_factory() if callable(f.default_factory) else f.default


_STR = (str,)
_OPT_STR = (str, type(None))
_LIST = (list, tuple)
_OPT_LIST = (list, tuple, type(None))
_TYPES: dict[str, tuple[type, ...]] = {
    "id": _STR,
    "task": _STR,
    "skill": _STR,
    "split": _STR,
    "question": _STR,
    "prompt": _STR,
    "gold": _STR,
    "gold_aliases": _LIST,
    "answer": _STR,
    "correct": (bool,),
    "category": _STR,
    "grade_reason": _STR,
    "exact_answer": _OPT_STR,
    "exact_answer_source": _STR,
    "exact_answer_reason": _STR,
    "exact_answer_char_span": _OPT_LIST,
    "exact_answer_token_span": _OPT_LIST,
    "exact_answer_token_text": _OPT_STR,
    "prompt_token_ids": _LIST,
    "answer_token_ids": _LIST,
    "token_logprobs": _LIST,
    "stop_reason": _STR,
    "sample_index": (int,),
}
assert set(_TYPES) == _FIELD_SET
_SPANS = ("exact_answer_char_span", "exact_answer_token_span")


def _check(key: str, value: Any) -> None:
    ok = isinstance(value, _TYPES[key])
    if ok and key == "sample_index":
        ok = not isinstance(value, bool)
    elif ok and key in _SPANS and value is not None:
        ok = len(value) == 2 and all(isinstance(i, int) and not isinstance(i, bool) for i in value)
    if not ok:
        want = " | ".join("null" if t is type(None) else t.__name__ for t in _TYPES[key])
        shape = " of 2 ints" if key in _SPANS else ""
        raise ValueError(f"record key {key!r}: expected {want}{shape}, got {value!r:.80}")
