"""Probing: capture activations at answer positions, fit linear probes per (hook, position).

`capture` writes an `ActivationStore` (safetensors shards + JSON), `FusedCapture` writes one from
inside generation (no second forward pass); `fit_probe_grid` fits every
cell at once; `Probe` is one cell's probe, model-checked when loaded; `evaluate_baselines`
scores the same examples with logit confidence and p(True).
"""

from tl_truth.probing.activations import ActivationStore, capture, default_hooks
from tl_truth.probing.baselines import evaluate_baselines, logit_scores, p_true_scores
from tl_truth.probing.fused_capture import FusedCapture
from tl_truth.probing.grid import ProbeGrid, fit_probe_grid
from tl_truth.probing.metrics import batched_roc_auc, bootstrap_auc_ci, roc_auc
from tl_truth.probing.probe import Probe, ProbeMismatchError
from tl_truth.probing.scoring import score_records

__all__ = [
    "ActivationStore",
    "FusedCapture",
    "Probe",
    "ProbeGrid",
    "ProbeMismatchError",
    "batched_roc_auc",
    "bootstrap_auc_ci",
    "capture",
    "default_hooks",
    "evaluate_baselines",
    "fit_probe_grid",
    "logit_scores",
    "p_true_scores",
    "roc_auc",
    "score_records",
]
