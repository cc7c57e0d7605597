"""Answer clusters: which of a question's sampled answers say the same thing.

Each sample gets a key, its located exact answer (or the whole answer when none was located)
after SQuAD-style normalisation; refusals share one key. Two keys join a cluster when they are
equal or one contains the other as whole words ("paris" / "paris france"), transitively. The
error-type taxonomy, majority vote and the sampling baselines all read these clusters; they
live here, apart from the sampling itself (`tl_truth.studies.resampling`), because they need
no model.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from tl_truth.answers.grading import normalize

REFUSAL_KEY = "<refusal>"
EMPTY_KEY = "<empty>"


# ---------------------------------------------------------------------------------------------
# Clustering


def answer_key(record: dict) -> str:
    """What a sample answered, normalised: its exact answer if located, else the whole answer.

    Args:
        record: a generation record (`category`, `exact_answer`, `answer`).

    Returns:
        The normalised key (`REFUSAL_KEY` for a refusal, `EMPTY_KEY` for nothing).

    >>> answer_key({"answer": "It is Paris.", "exact_answer": "Paris", "category": "correct"})
    'paris'
    """
    if record.get("category") == "refusal":
        return REFUSAL_KEY
    text = record.get("exact_answer") or record.get("answer") or ""
    return normalize(text) or EMPTY_KEY


def _contains_words(long: str, short: str) -> bool:
    return f" {short} " in f" {long} "


def cluster_keys(keys: Sequence[str]) -> list[int]:
    """Cluster ids (0, 1, ... in order of first appearance) for answer keys.

    Equal keys, or keys where one contains the other as whole words, share a cluster
    (transitively). The refusal and empty keys only ever match themselves.

    Args:
        keys: answer keys (`answer_key`).

    Returns:
        One cluster id per key.

    >>> cluster_keys(["paris", "lyon", "paris france", REFUSAL_KEY])
    [0, 1, 0, 2]
    """
    special = {REFUSAL_KEY, EMPTY_KEY}
    distinct = list(dict.fromkeys(keys))
    parent = list(range(len(distinct)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i, a in enumerate(distinct):
        for j in range(i):
            b = distinct[j]
            if a in special or b in special:
                continue
            if _contains_words(a, b) or _contains_words(b, a):
                parent[find(i)] = find(j)
    root_of = {k: find(i) for i, k in enumerate(distinct)}
    renumber: dict[int, int] = {}
    out = []
    for k in keys:
        out.append(renumber.setdefault(root_of[k], len(renumber)))
    return out


@dataclass
class Cluster:
    """One distinct answer among a question's samples.

    Attributes:
        id: the cluster id (`cluster_keys`).
        key: the most common key of its members.
        size: how many samples it holds.
        n_correct: how many of them were graded correct.
        members: their sample indices.
        refusal: whether it is the refusals' cluster.

    >>> Cluster(id=0, key="paris", size=3, n_correct=2, members=[0, 1, 4]).correct
    True
    """

    id: int
    key: str  # the most common key of its members
    size: int
    n_correct: int
    members: list[int]  # sample indices
    refusal: bool = False

    @property
    def correct(self) -> bool:
        """A cluster counts as the correct answer when most of its members were graded correct."""
        return 2 * self.n_correct > self.size


def clusters_of(samples: Sequence[dict]) -> list[Cluster]:
    """The clusters of one question's samples, largest first (ties: first seen).

    Args:
        samples: the question's sample records (`answer`, `exact_answer`, `correct`,
            `category`).

    Returns:
        Its `Cluster`s.

    >>> def rec(answer, i=0):
    ...     ok = answer == "Paris"
    ...     return {"task": "t", "id": "q", "split": "test", "question": "Capital of France?",
    ...             "gold": "Paris", "answer": answer, "exact_answer": answer, "correct": ok,
    ...             "category": "correct" if ok else "incorrect", "sample_index": i}
    >>> [(c.key, c.size) for c in clusters_of([rec("Lyon"), rec("Paris"), rec("Paris")])]
    [('paris', 2), ('lyon', 1)]
    """
    keys = [answer_key(s) for s in samples]
    ids = cluster_keys(keys)
    out = []
    for c in sorted(set(ids)):
        members = [i for i, x in enumerate(ids) if x == c]
        key = Counter(keys[i] for i in members).most_common(1)[0][0]
        out.append(
            Cluster(
                id=c,
                key=key,
                size=len(members),
                n_correct=sum(bool(samples[i]["correct"]) for i in members),
                members=members,
                refusal=key == REFUSAL_KEY,
            )
        )
    return sorted(out, key=lambda c: (-c.size, c.id))
