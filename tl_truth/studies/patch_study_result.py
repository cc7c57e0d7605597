"""`PatchStudy`: the patching study's per-question results, their average and their files.

One `PatchResult` grid (layers x exact-answer-aligned positions, `ALIGNED_POSITIONS`) per
"knows more than it shows" question, with the question and both answers. The study averages
them over questions, computes the fraction of the clean-vs-corrupted gap each cell closes, and
writes patching.json / .md, the average heatmaps and per-question figures. Kept apart from the
forward passes that fill it (`tl_truth.studies.patch_study`), so reading a saved study needs
no model.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tl_truth.intervention.patching import PatchResult
from tl_truth.results import Result, json_safe

ALIGNED_POSITIONS = (
    "exact-3",
    "exact-2",
    "before_exact",
    "exact_first",
    "exact_last",
    "after_exact",
)
PATCHING_FILE = "patching.json"


@dataclass
class PatchStudy(Result):
    """Per-question patching results and their average over questions.

    The result protocol (`tl_truth.results.Result`): `save(dir)` writes `patching.json`,
    `patching.md`, `patching_average.png` and `patching_examples/*.png`;
    `PatchStudy.load(dir)` reads it back (per-question grids at 4 places).

    Attributes:
        results: one `PatchResult` (layers x `ALIGNED_POSITIONS`) per question.
        pairs: per result, the question and the wrong and right answers.
        probe: the probe's hook, position and layer.
        meta: where the samples came from, how many questions were candidates, the model.

    >>> import tempfile, torch
    >>> from tl_truth.intervention.patching import PatchResult
    >>> grid = torch.arange(12.0).reshape(2, 6)  # 2 layers x 6 aligned positions
    >>> result = PatchResult(
    ...     probe_score=grid, answer_logit=-grid, clean_probe_score=11.0,
    ...     corrupted_probe_score=0.0, clean_answer_logit=0.0, corrupted_answer_logit=-11.0,
    ...     positions=list(range(6)), labels=list(ALIGNED_POSITIONS), layers=[0, 1])
    >>> pair = {"task": "t", "id": "q", "question": "Capital of France?", "wrong": "Lyon",
    ...         "right": "Paris", "wrong_answer": "Lyon.", "right_answer": "Paris."}
    >>> study = PatchStudy([result], [pair], probe={"hook": "blocks.1.hook_resid_pre"})
    >>> study.summary()["probe_score"]["best_cell"]
    {'layer': 1, 'position': 'after_exact', 'gap_closed': 1.0}
    >>> with tempfile.TemporaryDirectory() as d:
    ...     back = PatchStudy.load(study.save(d))
    >>> len(back.results), back.pairs[0]["right"]
    (1, 'Paris')
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
    """A study saved by `PatchStudy.save` (`PatchStudy.load`).

    Args:
        out_dir: the directory `PatchStudy.save` wrote.

    Returns:
        The `PatchStudy` (per-question grids at 4 places).

    >>> import tempfile, torch
    >>> from tl_truth.intervention.patching import PatchResult
    >>> result = PatchResult(
    ...     probe_score=torch.zeros(1, 6), answer_logit=torch.zeros(1, 6),
    ...     clean_probe_score=1.0, corrupted_probe_score=0.0, clean_answer_logit=1.0,
    ...     corrupted_answer_logit=0.0, positions=list(range(6)),
    ...     labels=list(ALIGNED_POSITIONS), layers=[0])
    >>> pair = {"question": "Q?", "wrong": "Lyon", "right": "Paris"}
    >>> with tempfile.TemporaryDirectory() as d:
    ...     study = load_study(PatchStudy([result], [pair]).save(d))
    >>> study.average().layers
    [0]
    """
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
