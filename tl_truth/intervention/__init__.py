"""Intervention: directions, steering hooks, and the probe as an activation-patching metric."""

from tl_truth.intervention.directions import (
    Direction,
    contrastive,
    from_probe,
    mass_mean,
    negated,
    random_like,
)
from tl_truth.intervention.patching import (
    PatchResult,
    logit_metric,
    patch_metrics,
    patch_probe_and_logit,
    probe_metric,
)
from tl_truth.intervention.steering import Steering, steer, steering_hook

__all__ = [
    "Direction",
    "PatchResult",
    "Steering",
    "contrastive",
    "from_probe",
    "logit_metric",
    "mass_mean",
    "negated",
    "patch_metrics",
    "patch_probe_and_logit",
    "probe_metric",
    "random_like",
    "steer",
    "steering_hook",
]
