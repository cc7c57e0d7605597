"""Steering evaluation plumbing on a tiny model (a random model answers nothing right, so the
numbers are trivial; the schema, controls and alpha = 0 identity are what is checked)."""

import json

import torch

from tl_truth.answers.generation import GenerationConfig
from tl_truth.data.questions import QADataset, make_question
from tl_truth.intervention.directions import from_probe
from tl_truth.probing.probe import Probe
from tl_truth.studies.steering_eval import steering_sweep


def test_sweep_schema_controls_and_zero_alpha(tmp_path):
    from tiny import tiny_model

    model = tiny_model("gpt2", "bridge")
    qs = [
        make_question(
            str(i), f"What is {i} + 1?", str(i + 1), "arithmetic", "arithmetic", grade="numeric"
        )
        for i in range(6)
    ]
    g = torch.Generator().manual_seed(0)
    x = torch.randn(40, model.cfg.d_model, generator=g)
    y = torch.arange(40) % 2
    probe = Probe.from_data(x, y, hook="blocks.1.hook_resid_post", layer=1, position="last_prompt")
    res = steering_sweep(
        model,
        QADataset("m", qs),
        {1: (probe, from_probe(probe, x))},
        alphas=[0.0, 50.0],
        n_random=2,
        config=GenerationConfig(max_new_tokens=4),
        progress=False,
    )
    assert len(res.settings) == 2
    zero = res.settings[0]
    assert zero["alpha"] == 0.0 and zero["accuracy"] == res.baseline_accuracy
    assert zero["break_rate"] in (None, 0.0) and zero["probe_score_shift"] == 0.0
    assert zero["random"]["n"] == 2
    out = res.save(tmp_path)
    data = json.loads((out / "steering.json").read_text())
    for key in ("baseline_accuracy", "settings", "best", "conclusion"):
        assert key in data
    assert {"accuracy_mean", "accuracy_sd", "recovery_rate_mean", "break_rate_mean"} <= set(
        data["settings"][0]["random"]
    )
    assert "random directions" in data["conclusion"]
    assert (out / "steering.png").stat().st_size > 1000
    assert len(res.to_dataframe()) == 2
