"""Activation patching with probe read-outs (Orgad et al. 2024, "LLMs know more than they show").

The paper's experiment: for a question the model answers wrong with greedy decoding but right in
some sample, patch residual-stream activations from the *right* (clean) run into the *wrong*
(corrupted) run, one (layer, position) at a time, and watch two read-outs of the patched run:
the error-detection probe's score and the logit of the correct answer's first token.

Structure follows `transformer_lens.patching`: one generic function (`patch_metrics`, any number
of metrics read from the *same* forward per cell) and thin specialisations
(`patch_probe_and_logit`, `patch_probe_and_logit_resid_pre`, ...). The patch itself is
TransformerLens' own `layer_pos_patch_setter`, hook names come from `tl_truth.models.hook_name`.

Metrics are TransformerLens `patching_metric`s: callables `logits -> 0-dim tensor`, so they also
work with `transformer_lens.patching.get_act_patch_resid_pre` and friends. A probe reads an
internal activation, not the logits, so `probe_metric` is a context manager that registers a
capture hook on the probe's hook point for as long as it is open; see `ProbeMetric`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import numpy as np
import pandas as pd
import torch
from jaxtyping import Float, Int
from torch import Tensor
from transformer_lens.patching import layer_pos_patch_setter

from tl_truth.models import HOOK_KINDS, hook_name, model_device
from tl_truth.probing.probe import Probe
from tl_truth.results import Result, markdown_table

Metric = Callable[[Float[Tensor, "batch pos d_vocab"]], Float[Tensor, ""]]


# ---------------------------------------------------------------------------------------------
# Metrics


class ProbeMetric:
    """A `patching_metric` giving a probe's decision function (logit of P(correct)).

    Mechanism: a metric only receives the logits, so on `__enter__` a *permanent* TransformerLens
    hook is added to `probe.hook` (it survives the `reset_hooks()` that `run_with_hooks` and
    `hooks()` do at their end). Every forward through that hook point stores the activation at
    `position` (detached); `metric(logits)` applies the probe to the activation stored by the
    latest forward, i.e. the one that produced `logits`, as long as the metric is evaluated right
    after its forward (what TL's patching functions do). With a batch, the per-row scores are
    averaged. `__exit__` removes exactly that hook, also when the block raises.

    The capture hook is moved to the end of its hook point's hooks before every forward, so a
    patch on the probe's own hook point (added later, e.g. by `run_with_hooks`) is seen by it.
    """

    def __init__(self, model: Any, probe: Probe, position: int):
        if probe.hook is None:
            raise ValueError("the probe has no `hook`: cannot tell which activation to read")
        self.model, self.probe, self.position = model, probe, int(position)
        self.activation: Tensor | None = None  # [batch, d_model] from the latest forward
        self._hook_point: Any = None
        self._lens_handle: Any = None
        self._pre_handle: Any = None

    def _capture(self, act: Tensor, hook: Any) -> None:
        # A forward shorter than `position` (e.g. the clean run of a pair of different lengths)
        # leaves nothing to read; calling the metric after it raises.
        in_range = -act.shape[1] <= self.position < act.shape[1]
        self.activation = act[:, self.position].detach().clone() if in_range else None

    def _move_last(self, module: Any, args: Any) -> None:
        # Forward pre-hooks run before the forward hooks are iterated: safe to reorder here.
        handle = self._lens_handle.hook
        if handle.id in module._forward_hooks:
            module._forward_hooks.move_to_end(handle.id)

    def __enter__(self) -> ProbeMetric:
        if self._lens_handle is not None:
            raise RuntimeError("this probe metric is already open")
        hp = self.model.hook_dict[self.probe.hook]
        before = list(hp.fwd_hooks)
        hp.add_hook(self._capture, dir="fwd", is_permanent=True)
        added = [h for h in hp.fwd_hooks if all(h is not b for b in before)]
        if len(added) != 1:  # pragma: no cover - defensive, depends on TransformerLens internals
            raise RuntimeError(f"could not identify the capture hook on {self.probe.hook}")
        self._hook_point, self._lens_handle = hp, added[0]
        self._pre_handle = hp.register_forward_pre_hook(self._move_last)
        self.activation = None
        return self

    def close(self) -> None:
        """Remove the capture hook (idempotent)."""
        if self._lens_handle is not None:
            self._lens_handle.hook.remove()
            self._hook_point.fwd_hooks[:] = [
                h for h in self._hook_point.fwd_hooks if h is not self._lens_handle
            ]
            self._pre_handle.remove()
        self._hook_point = self._lens_handle = self._pre_handle = None

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def per_row(self, logits: Tensor | None = None) -> Float[Tensor, " batch"]:
        """The probe's decision function for each row of the latest forward."""
        if self._lens_handle is None:
            raise RuntimeError("use the probe metric inside `with probe_metric(...) as metric:`")
        if self.activation is None:
            raise RuntimeError(f"no forward has reached {self.probe.hook} since the metric opened")
        return self.probe.decision_function(self.activation)

    def __call__(self, logits: Tensor | None = None) -> Float[Tensor, ""]:
        return self.per_row(logits).mean()


def probe_metric(model: Any, probe: Probe, position: int) -> ProbeMetric:
    """`with probe_metric(model, probe, position) as metric:` -> `metric(logits)`, the probe's
    decision function on `probe.hook`'s activation at `position` (full-sequence index, e.g.
    from `tl_truth.answers.positions.resolve_position`) in the forward that produced `logits`."""
    return ProbeMetric(model, probe, position)


def logit_metric(token_id: int, position: int) -> Metric:
    """`patching_metric`: the logit of `token_id` at `position` (batch-averaged).

    `position` is the position whose logits *predict* the token (e.g. the last prompt token for
    the first answer token)."""

    def metric(logits: Float[Tensor, "batch pos d_vocab"]) -> Float[Tensor, ""]:
        return logits[:, position, token_id].mean()

    return metric


# ---------------------------------------------------------------------------------------------
# Results


METRICS = {
    "probe_score": "probe score (logit P(correct))",
    "answer_logit": "answer logit",
}


@dataclass
class PatchResult(Result):
    """Probe score and answer logit of the corrupted run, patched at each (layer, position).

    `positions` are the patched positions (0..min_len-1 for a single example; negative offsets
    from the end after `average`). Baselines are the unpatched clean and corrupted runs.

    The result protocol (`tl_truth.results.Result`): `save(dir)` writes `patch_result.json`,
    `.md` and `.png`; `PatchResult.load(dir)` reads it back.
    """

    probe_score: Float[Tensor, "layers positions"]
    answer_logit: Float[Tensor, "layers positions"]
    clean_probe_score: float
    corrupted_probe_score: float
    clean_answer_logit: float
    corrupted_answer_logit: float
    hook_kind: str = "resid_pre"
    positions: list[int] = field(default_factory=list)
    labels: list[str] | None = None  # token strings of the patched positions, if known
    n_examples: int = 1
    layers: list[int] | None = None  # the patched layers (default 0..n-1)

    def __post_init__(self) -> None:
        if self.probe_score.shape != self.answer_logit.shape:
            raise ValueError("probe_score and answer_logit must have the same shape")
        if not self.positions:
            self.positions = list(range(self.probe_score.shape[1]))
        if self.layers is None:
            self.layers = list(range(self.probe_score.shape[0]))

    result_name = "patch_result"

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.probe_score.shape)  # type: ignore[return-value]

    def to_dataframe(self) -> pd.DataFrame:
        """One row per (layer, position): probe_score, answer_logit and both baselines."""
        n_layers, n_pos = self.shape
        rows = []
        for i, layer in enumerate(self.layers):
            for j in range(n_pos):
                rows.append(
                    {
                        "hook_kind": self.hook_kind,
                        "layer": layer,
                        "position": self.positions[j],
                        "token": self.labels[j] if self.labels else None,
                        "probe_score": float(self.probe_score[i, j]),
                        "answer_logit": float(self.answer_logit[i, j]),
                        "clean_probe_score": self.clean_probe_score,
                        "corrupted_probe_score": self.corrupted_probe_score,
                        "clean_answer_logit": self.clean_answer_logit,
                        "corrupted_answer_logit": self.corrupted_answer_logit,
                    }
                )
        return pd.DataFrame(rows)

    def to_dict(self) -> dict:
        return {
            "probe_score": self.probe_score.tolist(),
            "answer_logit": self.answer_logit.tolist(),
            "clean_probe_score": self.clean_probe_score,
            "corrupted_probe_score": self.corrupted_probe_score,
            "clean_answer_logit": self.clean_answer_logit,
            "corrupted_answer_logit": self.corrupted_answer_logit,
            "hook_kind": self.hook_kind,
            "positions": list(self.positions),
            "labels": self.labels,
            "n_examples": self.n_examples,
            "layers": self.layers,
        }

    @classmethod
    def from_dict(cls, d: dict) -> PatchResult:
        def grid(key: str) -> Tensor:  # null (a missing position) -> nan
            return torch.tensor([[np.nan if x is None else x for x in row] for row in d[key]])

        return cls(
            probe_score=grid("probe_score"),
            answer_logit=grid("answer_logit"),
            clean_probe_score=d["clean_probe_score"],
            corrupted_probe_score=d["corrupted_probe_score"],
            clean_answer_logit=d["clean_answer_logit"],
            corrupted_answer_logit=d["corrupted_answer_logit"],
            hook_kind=d.get("hook_kind", "resid_pre"),
            positions=list(d.get("positions") or []),
            labels=d.get("labels"),
            n_examples=d.get("n_examples", 1),
            layers=d.get("layers"),
        )

    # -- figure

    @property
    def figsize(self) -> tuple[float, float]:
        n_layers, n_pos = self.shape
        return (max(8.0, 0.35 * n_pos * 2 + 3), 0.4 * n_layers + 2.5)

    def _draw(self, ax: Any, metric: str) -> None:
        """One heatmap, colours centred on the corrupted baseline (red: towards clean)."""
        from matplotlib.colors import TwoSlopeNorm

        n_layers, n_pos = self.shape
        values, centre = getattr(self, metric), getattr(self, f"corrupted_{metric}")
        ticks = self.labels if self.labels else [str(p) for p in self.positions]
        v = values.detach().float().cpu().numpy()
        finite = v[np.isfinite(v)]  # a missing position (NaN) stays blank
        lo = min(float(finite.min()), centre) if finite.size else centre
        hi = max(float(finite.max()), centre) if finite.size else centre
        eps = 1e-6
        norm = TwoSlopeNorm(vcenter=centre, vmin=min(lo, centre - eps), vmax=max(hi, centre + eps))
        im = ax.imshow(v, aspect="auto", cmap="RdBu_r", norm=norm, origin="lower")
        ax.set_title(METRICS[metric])
        ax.set_xlabel("position")
        ax.set_ylabel(f"layer ({self.hook_kind})")
        ax.set_xticks(range(n_pos))
        ax.set_xticklabels(ticks, rotation=90, fontsize=7)
        ax.set_yticks(range(n_layers))
        ax.set_yticklabels([str(x) for x in self.layers], fontsize=7)
        ax.figure.colorbar(im, ax=ax)

    def plot(self, ax: Any = None, title: str | None = None, metric: str | None = None) -> Any:
        """Heatmaps of the probe score and the answer logit per (layer, position).

        Colours are centred on the corrupted baseline: red = towards the clean run's value.
        With no `ax`, a new (pyplot) figure holds both panels (or only `metric`) and its first
        Axes is returned; a given `ax` gets one panel (`metric`, default the probe score), a
        pair of Axes gets both. `title` goes above a figure made here, else above the panel.
        """
        if metric is not None and metric not in METRICS:
            raise ValueError(f"metric must be one of {list(METRICS)}, got {metric!r}")
        if ax is None:
            import matplotlib.pyplot as plt

            metrics = [metric] if metric else list(METRICS)
            w, h = self.figsize
            fig, axes = plt.subplots(
                1, len(metrics), figsize=(w * len(metrics) / 2, h), squeeze=False
            )
            for a, m in zip(axes[0], metrics, strict=True):
                self._draw(a, m)
            if title:
                fig.suptitle(title)
            fig.tight_layout()
            return axes[0][0]
        axes = list(ax) if isinstance(ax, (list, tuple, np.ndarray)) else [ax]
        for a, m in zip(axes, [metric] if metric else list(METRICS), strict=False):
            self._draw(a, m)
        if title:
            axes[0].set_title(f"{title}\n{axes[0].get_title()}")
        return ax

    def figure(self, title: str | None = None) -> Any:
        """Both heatmaps side by side on a new Figure (built without pyplot)."""
        from matplotlib.figure import Figure

        fig = Figure(figsize=self.figsize)
        for a, m in zip(fig.subplots(1, 2), METRICS, strict=True):
            self._draw(a, m)
        if title:
            fig.suptitle(title)
        fig.tight_layout()
        return fig

    # -- markdown

    def title(self) -> str:
        n = f", mean of {self.n_examples} examples" if self.n_examples > 1 else ""
        return f"Activation patching ({self.hook_kind}{n})"

    def _matrix(self, metric: str) -> pd.DataFrame:
        """`to_dataframe()[metric]` as layers (rows) x positions (columns)."""
        df = self.to_dataframe()
        labels = [str(p) for p in self.positions]
        if self.labels and len(set(self.labels)) == len(self.labels) and "layer" not in self.labels:
            labels = [str(t) for t in self.labels]
        elif self.labels:
            labels = [f"{p} {t!r}" for p, t in zip(self.positions, self.labels, strict=True)]
        out = pd.DataFrame({"layer": list(self.layers)})
        for p, label in zip(self.positions, labels, strict=True):
            out[label] = df.loc[df["position"] == p, metric].to_numpy()
        return out

    def markdown_frame(self) -> pd.DataFrame:
        return self._matrix("probe_score")

    def markdown_notes(self) -> str:
        return (
            f"Probe score of the patched corrupted run (rows: layers, columns: positions); "
            f"unpatched: corrupted {self.corrupted_probe_score:.3f}, clean "
            f"{self.clean_probe_score:.3f}.\n\n"
            f"Answer logit (unpatched: corrupted {self.corrupted_answer_logit:.3f}, clean "
            f"{self.clean_answer_logit:.3f}):\n\n" + markdown_table(self._matrix("answer_logit"))
        )

    @staticmethod
    def average(results: Sequence[PatchResult]) -> PatchResult:
        """Mean over examples, positions aligned from the end.

        Every result keeps its last `min(n_positions)` columns (so with prompts patched over
        their common prefix, -1 is each example's last patched token); positions become the
        offsets -k..-1 and token labels are dropped. Layers and hook kinds must agree.
        """
        if not results:
            raise ValueError("no results to average")
        layers = {r.shape[0] for r in results}
        kinds = {r.hook_kind for r in results}
        if len(layers) != 1 or len(kinds) != 1:
            raise ValueError(f"results differ in layers {layers} or hook kinds {kinds}")
        k = min(r.shape[1] for r in results)
        if k == 0:
            raise ValueError("a result has no positions")

        def mean(get: Callable[[PatchResult], Any]) -> Any:
            return torch.stack(
                [torch.as_tensor(get(r), dtype=torch.float64) for r in results]
            ).mean(0)

        return PatchResult(
            probe_score=mean(lambda r: r.probe_score[:, -k:]),
            answer_logit=mean(lambda r: r.answer_logit[:, -k:]),
            clean_probe_score=float(mean(lambda r: r.clean_probe_score)),
            corrupted_probe_score=float(mean(lambda r: r.corrupted_probe_score)),
            clean_answer_logit=float(mean(lambda r: r.clean_answer_logit)),
            corrupted_answer_logit=float(mean(lambda r: r.corrupted_answer_logit)),
            hook_kind=results[0].hook_kind,
            positions=list(range(-k, 0)),
            n_examples=sum(r.n_examples for r in results),
        )


# ---------------------------------------------------------------------------------------------
# Patching


def _as_tokens(tokens: Any, device: torch.device) -> Int[Tensor, "1 pos"]:
    t = torch.as_tensor(tokens, dtype=torch.long)
    if t.ndim == 1:
        t = t[None]
    if t.ndim != 2 or t.shape[0] != 1:
        raise ValueError(f"expected one token sequence, got shape {tuple(t.shape)}")
    return t.to(device)


def _patch_hook(act: Tensor, hook: Any, index: list[int], clean_activation: Tensor) -> Tensor:
    return layer_pos_patch_setter(act.clone(), index, clean_activation)


def _rows_patch_hook(
    act: Tensor, hook: Any, pos: list[int], src: list[int], clean_activation: Tensor
) -> Tensor:
    # Row r of a batch of corrupted copies gets clean position src[r] at position pos[r].
    act = act.clone()
    rows = torch.arange(len(pos), device=act.device)
    act[rows, torch.tensor(pos)] = clean_activation[0, torch.tensor(src)].to(act.dtype)
    return act


def _per_row(metric: Metric, logits: Tensor) -> Tensor:
    if hasattr(metric, "per_row"):
        return metric.per_row(logits)
    return torch.stack([torch.as_tensor(metric(logits[r : r + 1])) for r in range(len(logits))])


@torch.no_grad()
def patch_metrics(
    model: Any,
    clean_tokens: Any,
    corrupted_tokens: Any,
    metrics: Mapping[str, Metric],
    hook_kind: str = "resid_pre",
    layers: Sequence[int] | None = None,
    positions: Sequence[int] | None = None,
    show_progress: bool = False,
    clean_positions: Sequence[int] | None = None,
    read_clean: bool = True,
    batch_size: int = 1,
) -> tuple[dict[str, Tensor], dict[str, float], dict[str, float]]:
    """Generic patching: clean -> corrupted at each (layer, position), several metrics per cell.

    Like `transformer_lens.patching.generic_activation_patch` with `layer_pos_patch_setter`,
    but every metric is evaluated on the *same* patched forward (one forward per cell), and the
    two sequences may differ in length: by default the positions `0..min_len-1` are patched,
    clean position p into corrupted position p (meaningful for a shared prefix such as the
    prompt). `clean_positions` (same length as `positions`) instead takes the activation from
    another clean position for each patched one, e.g. to align two answers on their exact
    answers. Metrics that need hooks (`probe_metric`) must already be open. `read_clean=False`
    skips the metrics on the clean run (when their positions only mean something in the
    corrupted one); `clean` is then empty. `batch_size > 1` runs that many cells of a layer in
    one batched forward (same numbers, several times faster on CPU); metrics are then read per
    row: with a `per_row(logits)` method if they have one (`ProbeMetric`), else by calling them
    on each row's logits.

    Returns `(patched, clean, corrupted)`: `patched[name]` is [len(layers), len(positions)];
    `clean`/`corrupted` hold each metric on the unpatched runs.
    """
    from tqdm.auto import tqdm

    if hook_kind not in HOOK_KINDS:
        raise ValueError(f"unknown hook kind {hook_kind!r}; choose from {HOOK_KINDS}")
    device = model_device(model)
    clean, corrupted = _as_tokens(clean_tokens, device), _as_tokens(corrupted_tokens, device)
    n_layers = model.cfg.n_layers
    layers = list(range(n_layers)) if layers is None else [int(x) for x in layers]
    common = min(clean.shape[1], corrupted.shape[1])
    positions = list(range(common)) if positions is None else [int(p) for p in positions]
    if clean_positions is None:
        for p in positions:
            if not 0 <= p < common:
                raise ValueError(f"position {p} is outside the common length {common}")
    else:
        clean_positions = [int(q) for q in clean_positions]
        if len(clean_positions) != len(positions):
            raise ValueError("clean_positions must match positions one to one")
        for p, q in zip(positions, clean_positions, strict=True):
            if not (0 <= p < corrupted.shape[1] and 0 <= q < clean.shape[1]):
                raise ValueError(f"position {p} <- {q} is outside the sequences")
    names = [hook_name(hook_kind, layer, n_layers) for layer in layers]

    def read(logits: Tensor) -> dict[str, float]:
        return {k: float(m(logits)) for k, m in metrics.items()}

    clean_logits, cache = model.run_with_cache(clean, names_filter=lambda n: n in names)
    clean_values = read(clean_logits) if read_clean else {}
    corrupted_values = read(model(corrupted))
    out = {k: torch.zeros(len(layers), len(positions)) for k in metrics}
    src = list(positions) if clean_positions is None else clean_positions
    if batch_size > 1:
        # All positions of a layer in batches of copies of the corrupted run, row r patched
        # at its own position; the metrics are read per row (`_per_row`).
        chunks = [
            (i, list(range(j, min(j + batch_size, len(positions)))))
            for i in range(len(layers))
            for j in range(0, len(positions), batch_size)
        ]
        for i, js in tqdm(chunks, disable=not show_progress):
            hook = partial(
                _rows_patch_hook,
                pos=[positions[j] for j in js],
                src=[src[j] for j in js],
                clean_activation=cache[names[i]],
            )
            logits = model.run_with_hooks(
                corrupted.expand(len(js), -1), fwd_hooks=[(names[i], hook)]
            )
            for k, m in metrics.items():
                out[k][i, js] = _per_row(m, logits).float().cpu()
        return out, clean_values, corrupted_values
    cells = [(i, j) for i in range(len(layers)) for j in range(len(positions))]
    for i, j in tqdm(cells, disable=not show_progress):
        if clean_positions is None:
            hook = partial(
                _patch_hook, index=[layers[i], positions[j]], clean_activation=cache[names[i]]
            )
        else:
            # one corrupted row: clean position src[j] into corrupted position positions[j]
            hook = partial(
                _rows_patch_hook,
                pos=[positions[j]],
                src=[src[j]],
                clean_activation=cache[names[i]],
            )
        values = read(model.run_with_hooks(corrupted, fwd_hooks=[(names[i], hook)]))
        for k, v in values.items():
            out[k][i, j] = v
    return out, clean_values, corrupted_values


def patch_probe_and_logit(
    model: Any,
    clean_tokens: Any,
    corrupted_tokens: Any,
    probe: Probe,
    probe_position: int,
    answer_token_id: int,
    answer_position: int,
    hook_kind: str = "resid_pre",
    show_progress: bool = False,
    layers: Sequence[int] | None = None,
    positions: Sequence[int] | None = None,
) -> PatchResult:
    """The paper's experiment on one question (clean = the right run, corrupted = the wrong one).

    Patches `hook_kind` at every layer and every position `0..min_len-1` and records the probe
    score at `probe_position` and the logit of `answer_token_id` at `answer_position` (the
    position predicting it) from the same patched forward. Positions are full-sequence indices
    used in both runs (as for the baselines), so they should lie in the shared prefix or mean
    the same thing in both sequences.
    """
    with probe_metric(model, probe, probe_position) as pm:
        metrics = {
            "probe_score": pm,
            "answer_logit": logit_metric(answer_token_id, answer_position),
        }
        out, clean, corrupted = patch_metrics(
            model,
            clean_tokens,
            corrupted_tokens,
            metrics,
            hook_kind,
            layers,
            positions,
            show_progress=show_progress,
        )
    n_pos = out["probe_score"].shape[1]
    patched = list(positions) if positions is not None else list(range(n_pos))
    labels = None
    if getattr(model, "tokenizer", None) is not None:
        ids = torch.as_tensor(corrupted_tokens).reshape(-1).tolist()
        labels = [model.tokenizer.decode([ids[p]]) for p in patched]
    return PatchResult(
        probe_score=out["probe_score"],
        answer_logit=out["answer_logit"],
        clean_probe_score=clean["probe_score"],
        corrupted_probe_score=corrupted["probe_score"],
        clean_answer_logit=clean["answer_logit"],
        corrupted_answer_logit=corrupted["answer_logit"],
        hook_kind=hook_kind,
        positions=patched,
        labels=labels,
        layers=list(layers) if layers is not None else None,
    )


patch_probe_and_logit_resid_pre = partial(patch_probe_and_logit, hook_kind="resid_pre")
patch_probe_and_logit_resid_mid = partial(patch_probe_and_logit, hook_kind="resid_mid")
patch_probe_and_logit_resid_post = partial(patch_probe_and_logit, hook_kind="resid_post")
patch_probe_and_logit_attn_out = partial(patch_probe_and_logit, hook_kind="attn_out")
patch_probe_and_logit_mlp_out = partial(patch_probe_and_logit, hook_kind="mlp_out")
