"""Sampling baselines: how uncertain are the K sampled answers, and does that beat the probe?

The field's strongest black-box detectors read the spread of sampled answers. Three are
computed here from the K samples `tl-truth resample` draws, each as a *confidence* that the
greedy answer is right (higher = more likely correct), and compared with the correctness probe
on the same questions:

* `semantic_entropy` (Farquhar et al., Nature 2024, the "discrete" variant): the entropy of the
  distribution of samples over meaning clusters, by counts, negated. Farquhar et al. cluster
  by bidirectional entailment with an NLI model; none ships offline here, so clusters are the
  normalised exact answers (`tl_truth.studies.resampling.cluster_keys`: equal, or one
  containing the other as whole words). Pass `cluster_fn` to use your own clustering.
* `lexical_similarity`: the mean pairwise ROUGE-L F1 between the sampled answers' texts
  (LM-Polygraph's `LexicalSimilarity` with ROUGE-L).
* `greedy_agreement`: the share of samples in the greedy answer's cluster.

Refusals are a cluster of their own. Questions with no samples get nan.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from tl_truth.answers.grading import normalize
from tl_truth.probing.metrics import bootstrap_auc_ci, paired_bootstrap_auc_diff, roc_auc
from tl_truth.studies.resampling import SampleSet, answer_key, cluster_keys

ClusterFn = Callable[[Sequence[Mapping[str, Any]]], Sequence[int]]
METHODS = ("semantic_entropy", "lexical_similarity", "greedy_agreement")


def _default_clusters(answers: Sequence[Mapping[str, Any]]) -> list[int]:
    return cluster_keys([answer_key(dict(a)) for a in answers])


def discrete_semantic_entropy(cluster_ids: Sequence[int]) -> float:
    """Entropy (nats) of the cluster distribution by counts.

    Args:
        cluster_ids: one cluster id per sample.

    Returns:
        The entropy (nan with no samples).

    >>> round(discrete_semantic_entropy([0, 0, 1, 1]), 4)
    0.6931
    >>> discrete_semantic_entropy([3, 3, 3])
    0.0
    """
    counts = np.array(list(Counter(cluster_ids).values()), dtype=float)
    if counts.sum() == 0:
        return float("nan")
    p = counts / counts.sum()
    return float(-(p * np.log(p)).sum()) + 0.0


def rouge_l_f1(a: str, b: str) -> float:
    """ROUGE-L F1 between two texts over normalised words (longest common subsequence).

    Args:
        a: one text.
        b: the other.

    Returns:
        The F1 of the longest common word subsequence (1.0 for two empty texts).

    >>> rouge_l_f1("the capital is Paris", "The capital is Lyon")  # articles dropped
    0.6666666666666666
    """
    x, y = normalize(a).split(), normalize(b).split()
    if not x or not y:
        return float(x == y)
    prev = [0] * (len(y) + 1)
    for xi in x:
        cur = [0]
        for j, yj in enumerate(y):
            cur.append(prev[j] + 1 if xi == yj else max(prev[j + 1], cur[j]))
        prev = cur
    lcs = prev[-1]
    if lcs == 0:
        return 0.0
    p, r = lcs / len(x), lcs / len(y)
    return 2 * p * r / (p + r)


def lexical_similarity(texts: Sequence[str]) -> float:
    """Mean pairwise ROUGE-L F1 of the texts.

    Args:
        texts: the sampled answers' texts.

    Returns:
        The mean over pairs (nan with fewer than two texts).

    >>> lexical_similarity(["Paris", "Paris", "Lyon"])
    0.3333333333333333
    """
    pairs = [(i, j) for i in range(len(texts)) for j in range(i + 1, len(texts))]
    if not pairs:
        return float("nan")
    return float(np.mean([rouge_l_f1(texts[i], texts[j]) for i, j in pairs]))


def sampling_scores(
    sets: Sequence[SampleSet], cluster_fn: ClusterFn | None = None
) -> dict[str, np.ndarray]:
    """Each method's confidence in each question's greedy answer (higher = more confident).

    Args:
        sets: the resampled questions (`Resampling.sets`).
        cluster_fn: answers -> cluster id per answer, over the greedy answer followed by the
            samples (default: normalised exact answers, `cluster_keys`).

    Returns:
        method name -> array over `sets`.

    >>> from tl_truth.studies.resampling import SampleSet
    >>> def rec(answer, i=0, qid="q"):
    ...     ok = answer == "Paris"
    ...     return {"task": "t", "id": qid, "split": "test", "answer": answer,
    ...             "exact_answer": answer, "correct": ok,
    ...             "category": "correct" if ok else "incorrect", "sample_index": i}
    >>> sets = [SampleSet(rec("Lyon", qid="a"), [rec(x, i, "a") for i, x in enumerate(["Paris", "Lyon"])]),
    ...         SampleSet(rec("Paris", qid="b"), [rec("Paris", i, "b") for i in range(2)])]
    >>> {name: v.tolist() for name, v in sampling_scores(sets).items()}
    {'semantic_entropy': [-0.6931471805599453, -0.0], 'lexical_similarity': [0.0, 1.0], 'greedy_agreement': [0.5, 1.0]}
    """
    cluster_fn = cluster_fn or _default_clusters
    out = {m: np.full(len(sets), np.nan) for m in METHODS}
    for i, s in enumerate(sets):
        if not s.samples:
            continue
        ids = list(cluster_fn([s.greedy, *s.samples]))
        greedy_id, sample_ids = ids[0], ids[1:]
        out["semantic_entropy"][i] = -discrete_semantic_entropy(sample_ids)
        out["lexical_similarity"][i] = lexical_similarity(
            [x.get("answer") or "" for x in s.samples]
        )
        out["greedy_agreement"][i] = float(np.mean([c == greedy_id for c in sample_ids]))
    return out


def compare_with_probe(
    sets: Sequence[SampleSet],
    probe_scores: Sequence[float] | None = None,
    cluster_fn: ClusterFn | None = None,
    n_boot: int = 1000,
    seed: int = 0,
) -> dict:
    """AUC (with CI) of each sampling method, and of the probe, for the greedy answers' labels.

    All methods are scored on the same questions: those where every method has a score.
    With `probe_scores` (the probe's P(correct) of each greedy answer), each sampling method
    also gets `probe_minus_method`, a paired bootstrap CI of the AUC difference.

    Args:
        sets: the resampled questions (`Resampling.sets`).
        probe_scores: the probe's P(correct) of each greedy answer (None: no probe row).
        cluster_fn: answers -> cluster ids (default: normalised exact answers).
        n_boot: bootstrap replicates for the CIs (0: none).
        seed: the bootstrap seed.

    Returns:
        `n`, `n_correct`, `clustering`, `auc` and `ci` per method (and the probe), and
        `probe_minus_method` when `probe_scores` are given.

    >>> from tl_truth.studies.resampling import SampleSet
    >>> def rec(answer, i=0, qid="q"):
    ...     ok = answer == "Paris"
    ...     return {"task": "t", "id": qid, "split": "test", "answer": answer,
    ...             "exact_answer": answer, "correct": ok,
    ...             "category": "correct" if ok else "incorrect", "sample_index": i}
    >>> sets = [SampleSet(rec("Lyon", qid="a"), [rec(x, i, "a") for i, x in enumerate(["Paris", "Lyon"])]),
    ...         SampleSet(rec("Paris", qid="b"), [rec("Paris", i, "b") for i in range(2)])]
    >>> out = compare_with_probe(sets, probe_scores=[0.2, 0.9], n_boot=0)
    >>> out["n"], out["auc"]["greedy_agreement"], out["auc"]["probe"]
    (2, 1.0, 1.0)
    """
    labels = np.array([int(bool(s.greedy["correct"])) for s in sets])
    methods = sampling_scores(sets, cluster_fn)
    if probe_scores is not None:
        methods["probe"] = np.array(
            [np.nan if v is None else float(v) for v in probe_scores], dtype=float
        )
    keep = np.all([~np.isnan(v) for v in methods.values()], axis=0)
    out: dict[str, Any] = {
        "n": int(keep.sum()),
        "n_correct": int(labels[keep].sum()),
        "clustering": "user-supplied cluster_fn"
        if cluster_fn
        else "normalised exact answers (no NLI model offline)",
        "auc": {},
        "ci": {},
    }
    for name, v in methods.items():
        auc = roc_auc(v[keep], labels[keep]) if keep.any() else float("nan")
        out["auc"][name] = auc
        out["ci"][name] = (
            list(bootstrap_auc_ci(v[keep], labels[keep], n_boot=n_boot, seed=seed))
            if n_boot and not np.isnan(auc)
            else [None, None]
        )
    if "probe" in methods and keep.any():
        out["probe_minus_method"] = {}
        for name in METHODS:
            d, ci = paired_bootstrap_auc_diff(
                methods["probe"][keep], methods[name][keep], labels[keep], max(n_boot, 1), seed
            )
            out["probe_minus_method"][name] = {"auc_diff": d, "ci": list(ci)}
    return out
