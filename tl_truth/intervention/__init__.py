"""Intervention: directions, steering hooks, and the probe as an activation-patching metric."""

from tl_truth.intervention.contrastive_pairs import contrastive_directions
from tl_truth.intervention.directions import (
    Direction,
    contrastive,
    from_probe,
    mass_mean,
    negated,
    random_like,
)
from tl_truth.intervention.heads import HeadDirection, HeadDirections, head_directions, rank_heads
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
    "HeadDirection",
    "HeadDirections",
    "PatchResult",
    "Steering",
    "contrastive",
    "contrastive_directions",
    "from_probe",
    "head_directions",
    "logit_metric",
    "mass_mean",
    "negated",
    "patch_metrics",
    "patch_probe_and_logit",
    "probe_metric",
    "random_like",
    "rank_heads",
    "steer",
    "steering_hook",
]
