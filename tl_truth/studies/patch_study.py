"""Activation patching on "knows more than it shows" questions, over many questions.

For every question answered wrong greedily but right in one of its samples (`resampling.py`):
clean = the prompt + the right sample, corrupted = the prompt + the wrong greedy answer. The two
answers differ in length and wording, so positions are aligned on the exact answer: the three
tokens before it, its first and last token and the token after it, in each run. At each
(layer, aligned position), the clean activation is patched into the corrupted run and, from the
same forward, the probe's score (at the corrupted answer's probe position) and the logit of the
right answer's first token (where the wrong answer's first token was predicted) are read.

Clean baselines are each run's own values (the probe at the clean answer's own position, the
logit the clean run gave its own first answer token), so "fraction of the gap closed" compares
like with like.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from tl_truth.answers.positions import resolve_position
from tl_truth.intervention.patching import PatchResult, logit_metric, patch_metrics, probe_metric
from tl_truth.models import model_device
from tl_truth.probing.probe import Probe
from tl_truth.results import Result, json_safe
from tl_truth.studies.resampling import SampleSet

ALIGNED_POSITIONS = (
    "exact-3",
    "exact-2",
    "before_exact",
    "exact_first",
    "exact_last",
    "after_exact",
)
PATCHING_FILE = "patching.json"


def aligned_position(name: str, record: dict) -> int | None:
    """Full-sequence index of an exact-answer-aligned position (`exact-k`: k tokens before)."""
    if name.startswith("exact-"):
        span = record.get("exact_answer_token_span")
        if span is None:
            return None
        pos = span[0] - int(name.removeprefix("exact-"))
        return pos if pos >= 0 else None
    return resolve_position(name, record)


def knows_more_pairs(sets: Sequence[SampleSet]) -> list[tuple[dict, dict]]:
    """(wrong greedy record, first right sample) for every question where both have an exact
    answer located; the right sample is the first correct one in sample order."""
    pairs = []
    for s in sets:
        g = s.greedy
        if g["correct"] or g.get("exact_answer_token_span") is None:
            continue
        right = [r for r in s.samples if r["correct"] and r.get("exact_answer_token_span")]
        if right:
            pairs.append((g, right[0]))
    return pairs


def _seq(r: dict) -> list[int]:
    return r["prompt_token_ids"] + r["answer_token_ids"]


@torch.no_grad()
def _own_values(model: Any, probe: Probe, r: dict, token_id: int) -> tuple[float, float]:
    """A run's probe score at its own probe position and the logit of `token_id` where the
    run's own exact answer starts."""
    pos = resolve_position(probe.position, r)
    start = r["exact_answer_token_span"][0]
    tokens = torch.tensor([_seq(r)], device=model_device(model))
    with probe_metric(model, probe, pos) as pm:
        logits = model(tokens)
        return float(pm(logits)), float(logit_metric(token_id, start - 1)(logits))


def patch_pair(
    model: Any,
    wrong: dict,
    right: dict,
    probe: Probe,
    layers: Sequence[int],
    hook_kind: str = "resid_pre",
) -> PatchResult:
    """One question: patch the right run into the wrong one at aligned positions."""
    probe_pos = resolve_position(probe.position, wrong)
    if probe_pos is None:
        raise ValueError(f"the wrong answer has no {probe.position!r} position")
    cols = [
        (j, aligned_position(n, wrong), aligned_position(n, right))
        for j, n in enumerate(ALIGNED_POSITIONS)
    ]
    cols = [(j, p, q) for j, p, q in cols if p is not None and q is not None]
    token = _seq(right)[right["exact_answer_token_span"][0]]
    answer_pos = wrong["exact_answer_token_span"][0] - 1
    probe_score = torch.full((len(layers), len(ALIGNED_POSITIONS)), float("nan"))
    answer_logit = probe_score.clone()
    with probe_metric(model, probe, probe_pos) as pm:
        metrics = {"probe_score": pm, "answer_logit": logit_metric(token, answer_pos)}
        out, _, corrupted = patch_metrics(
            model,
            _seq(right),
            _seq(wrong),
            metrics,
            hook_kind,
            layers,
            positions=[p for _, p, _ in cols],
            clean_positions=[q for _, _, q in cols],
            read_clean=False,  # clean baselines come from the clean run's own positions
            batch_size=len(cols),
        )
    idx = [j for j, _, _ in cols]
    probe_score[:, idx] = out["probe_score"]
    answer_logit[:, idx] = out["answer_logit"]
    clean_probe, clean_logit = _own_values(model, probe, right, token)
    return PatchResult(
        probe_score=probe_score,
        answer_logit=answer_logit,
        clean_probe_score=clean_probe,
        corrupted_probe_score=corrupted["probe_score"],
        clean_answer_logit=clean_logit,
        corrupted_answer_logit=corrupted["answer_logit"],
        hook_kind=hook_kind,
        positions=list(range(len(ALIGNED_POSITIONS))),
        labels=list(ALIGNED_POSITIONS),
        layers=list(layers),
    )


@dataclass
class PatchStudy(Result):
    """Per-question patching results and their average over questions.

    The result protocol (`tl_truth.results.Result`): `save(dir)` writes `patching.json`,
    `patching.md`, `patching_average.png` and `patching_examples/*.png`;
    `PatchStudy.load(dir)` reads it back (per-question grids at 4 places).
    """

    results: list[PatchResult]
    pairs: list[dict]  # question, wrong and right answers per result
    probe: dict = field(default_factory=dict)
    meta: dict = field(default_factory=dict)

    result_name = "patching"
    figure_name = "patching_average"
    dpi = 110

    def average(self) -> PatchResult:
        """NaN-aware mean over questions (a missing aligned position is left out)."""
        if not self.results:
            raise ValueError("no patched questions")
        r0 = self.results[0]

        def mean(get):
            return torch.as_tensor(
                np.nanmean(np.stack([np.asarray(get(r), dtype=float) for r in self.results]), 0)
            )

        return PatchResult(
            probe_score=mean(lambda r: r.probe_score),
            answer_logit=mean(lambda r: r.answer_logit),
            clean_probe_score=float(mean(lambda r: r.clean_probe_score)),
            corrupted_probe_score=float(mean(lambda r: r.corrupted_probe_score)),
            clean_answer_logit=float(mean(lambda r: r.clean_answer_logit)),
            corrupted_answer_logit=float(mean(lambda r: r.corrupted_answer_logit)),
            hook_kind=r0.hook_kind,
            positions=list(r0.positions),
            labels=list(ALIGNED_POSITIONS),
            n_examples=len(self.results),
            layers=list(r0.layers),
        )

    def gap_closed(self, metric: str = "probe_score") -> Any:
        """Per (layer, position): (mean patched - mean corrupted) / (mean clean - mean
        corrupted), each mean over the questions that have that position. A ratio of means,
        not a mean of per-question ratios, which explode where clean ~ corrupted."""
        patched = np.stack([getattr(r, metric).double().numpy() for r in self.results])
        clean = np.array([getattr(r, f"clean_{metric}") for r in self.results])[:, None, None]
        corr = np.array([getattr(r, f"corrupted_{metric}") for r in self.results])[:, None, None]
        present = np.isfinite(patched)
        n = present.sum(0)

        def mean(a):
            return np.where(present, a, 0.0).sum(0) / np.maximum(n, 1)

        gap = mean(clean + 0 * patched) - mean(corr + 0 * patched)
        with np.errstate(invalid="ignore", divide="ignore"):
            out = (mean(np.nan_to_num(patched)) - mean(corr + 0 * patched)) / gap
        return np.where((n > 0) & (np.abs(gap) > 1e-9), out, np.nan)

    def summary(self) -> dict:
        avg = self.average()
        out = {
            "n_questions": len(self.results),
            "layers": avg.layers,
            "positions": list(ALIGNED_POSITIONS),
            "hook_kind": avg.hook_kind,
            "probe": self.probe,
        }
        for metric in ("probe_score", "answer_logit"):
            clean = [getattr(r, f"clean_{metric}") for r in self.results]
            corr = [getattr(r, f"corrupted_{metric}") for r in self.results]
            gap = self.gap_closed(metric)
            block = {
                "clean_mean": float(np.mean(clean)),
                "corrupted_mean": float(np.mean(corr)),
                "clean_higher_fraction": float(
                    np.mean([c > w for c, w in zip(clean, corr, strict=True)])
                ),
            }
            if gap is not None and np.isfinite(gap).any():
                i, j = np.unravel_index(np.nanargmax(gap), gap.shape)
                block["best_cell"] = {
                    "layer": avg.layers[i],
                    "position": ALIGNED_POSITIONS[j],
                    "gap_closed": float(gap[i, j]),
                }
                block["gap_closed"] = gap.tolist()
            out[metric] = block
        return out

    def to_dict(self) -> dict:
        """`{"summary", "meta", "examples"}`: each example is its pair (question, answers) and
        its `PatchResult` values."""
        return {
            "summary": self.summary(),
            "meta": self.meta,
            "examples": [p | _values(r) for r, p in zip(self.results, self.pairs, strict=True)],
        }

    def to_json(self) -> dict:
        """patching.json: the summary and the per-question grids at 4 places; the baselines
        (`clean_*`, `corrupted_*`) and `meta` as they are."""
        d = self.to_dict()
        return {
            "summary": json_safe(d["summary"]),
            "meta": d["meta"],
            "examples": [
                ex | {k: json_safe(ex[k]) for k in ("probe_score", "answer_logit")}
                for ex in d["examples"]
            ],
        }

    @classmethod
    def from_dict(cls, d: dict) -> PatchStudy:
        summary = d["summary"]
        results, pairs = [], []
        for ex in d["examples"]:
            results.append(
                PatchResult.from_dict(
                    {k: ex[k] for k in _RESULT_KEYS}
                    | {
                        "hook_kind": summary["hook_kind"],
                        "positions": list(range(len(ALIGNED_POSITIONS))),
                        "labels": list(ALIGNED_POSITIONS),
                        "layers": summary["layers"],
                    }
                )
            )
            pairs.append({k: v for k, v in ex.items() if k not in _RESULT_KEYS})
        return cls(results, pairs, probe=summary.get("probe", {}), meta=d.get("meta", {}))

    def to_dataframe(self):
        """One row per (question, layer, aligned position)."""
        import pandas as pd

        frames = []
        for i, (r, p) in enumerate(zip(self.results, self.pairs, strict=True)):
            df = r.to_dataframe()
            df.insert(0, "question", p["question"])
            df.insert(0, "example", i)
            frames.append(df)
        return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()

    # -- figures

    def _title(self) -> str:
        return (
            "clean (right sample) -> corrupted (wrong greedy), "
            f"mean of {len(self.results)} questions"
        )

    @property
    def figsize(self) -> tuple[float, float]:
        return self.average().figsize

    def plot(self, ax=None, title: str | None = None, metric: str | None = None):
        """Average heatmaps (probe score, answer logit) over the patched questions; see
        `PatchResult.plot`."""
        return self.average().plot(ax=ax, title=title or self._title(), metric=metric)

    def figure(self, title: str | None = None):
        """Both average heatmaps on a new Figure (built without pyplot)."""
        return self.average().figure(title=title or self._title())

    # -- markdown

    def title(self) -> str:
        return f"Activation patching on {len(self.results)} 'knows more than it shows' questions"

    def markdown_frame(self):
        """Per read-out: corrupted and clean means, and the cell that closes most of the gap."""
        import pandas as pd

        s = self.summary()
        rows = []
        for metric in ("probe_score", "answer_logit"):
            b = s[metric]
            best = b.get("best_cell")
            rows.append(
                {
                    "read-out": metric,
                    "corrupted (wrong greedy)": b["corrupted_mean"],
                    "clean (right sample)": b["clean_mean"],
                    "clean higher": f"{b['clean_higher_fraction']:.2f}",
                    "best cell": f"layer {best['layer']} / {best['position']}" if best else None,
                    "gap closed": f"{best['gap_closed']:.2f}" if best else None,
                }
            )
        return pd.DataFrame(rows)

    def markdown_notes(self) -> str:
        s = self.summary()
        return (
            f"{s['n_questions']} questions answered wrong greedily and right in a sample "
            f"('knows more than it shows'). Patched {s['hook_kind']} at layers {s['layers']} x "
            f"positions {', '.join(s['positions'])} (aligned on each run's exact answer); probe "
            f"{self.probe.get('hook')} / {self.probe.get('position')}.\n"
        )

    # -- files

    def save(self, out_dir: str | Path, max_example_plots: int = 8) -> Path:
        """patching.json, patching.md, patching_average.png and up to `max_example_plots`
        per-question figures in patching_examples/."""
        out = super().save(out_dir)
        (out / "patching_examples").mkdir(parents=True, exist_ok=True)
        for i, (r, p) in enumerate(zip(self.results, self.pairs, strict=True)):
            if i >= max_example_plots:
                break
            fig = r.figure(title=f"{p['question']}  wrong: {p['wrong']!r}  right: {p['right']!r}")
            fig.savefig(out / "patching_examples" / f"{i:03d}.png", dpi=100, bbox_inches="tight")
        return out


def load_study(out_dir: str | Path) -> PatchStudy:
    """A study saved by `PatchStudy.save` (`PatchStudy.load`)."""
    return PatchStudy.load(out_dir)


_RESULT_KEYS = (
    "probe_score",
    "answer_logit",
    "clean_probe_score",
    "corrupted_probe_score",
    "clean_answer_logit",
    "corrupted_answer_logit",
)


def _values(r: PatchResult) -> dict:
    d = r.to_dict()
    return {k: d[k] for k in _RESULT_KEYS}


def patching_study(
    model: Any,
    sets: Sequence[SampleSet],
    probe: Probe,
    layers: Sequence[int] | None = None,
    hook_kind: str = "resid_pre",
    max_questions: int | None = None,
    progress: bool = True,
) -> PatchStudy:
    """Patch every "wrong greedy, right sample" question among `sets` (up to `max_questions`)."""
    pairs = knows_more_pairs(sets)
    if max_questions is not None:
        pairs = pairs[:max_questions]
    if not pairs:
        raise ValueError(
            "no question is answered wrong greedily and right in a sample (with exact answers "
            "located in both): resample more questions or more samples"
        )
    layers = list(range(model.cfg.n_layers)) if layers is None else list(layers)
    results, info = [], []
    for wrong, right in tqdm(pairs, desc="patch", disable=not progress):
        results.append(patch_pair(model, wrong, right, probe, layers, hook_kind))
        info.append(
            {
                "task": wrong["task"],
                "id": wrong["id"],
                "question": wrong["question"],
                "wrong": wrong["exact_answer"],
                "right": right["exact_answer"],
                "wrong_answer": wrong["answer"],
                "right_answer": right["answer"],
            }
        )
    return PatchStudy(
        results,
        info,
        probe={"hook": probe.hook, "position": probe.position, "layer": probe.layer},
        meta={"n_candidates": len(knows_more_pairs(sets)), "n_questions": len(sets)},
    )
