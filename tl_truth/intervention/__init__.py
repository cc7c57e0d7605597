"""Intervention: directions, steering hooks, and the probe as an activation-patching metric."""

from tl_truth.intervention.directions import Direction, from_probe, negated, random_like
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
    "from_probe",
    "logit_metric",
    "negated",
    "patch_metrics",
    "patch_probe_and_logit",
    "probe_metric",
    "random_like",
    "steer",
    "steering_hook",
]
