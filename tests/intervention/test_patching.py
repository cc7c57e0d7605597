import matplotlib
import matplotlib.pyplot as plt
import pytest
import torch
from transformer_lens.patching import get_act_patch_resid_pre

from tl_truth.intervention.patching import (
    PatchResult,
    logit_metric,
    patch_metrics,
    patch_probe_and_logit,
    probe_metric,
)
from tl_truth.models import hook_name
from tl_truth.probing.probe import Probe

matplotlib.use("Agg")
pytestmark = pytest.mark.backend

CLEAN = [1, 5, 9, 30, 40, 50, 60]
DIFF = 3  # the one position where the corrupted sequence differs
CORRUPTED = CLEAN[:DIFF] + [31] + CLEAN[DIFF + 1 :]


def make_probe(model, hook, seed=0):
    gen = torch.Generator().manual_seed(seed)
    X = torch.randn(40, model.cfg.d_model, generator=gen)
    y = torch.arange(40) % 2
    X[y == 1] += torch.randn(model.cfg.d_model, generator=gen)
    return Probe.from_data(X, y, kind="mean_diff", hook=hook)


def capture_hooks(model, hook):
    hp = model.hook_dict[hook]
    return len(hp.fwd_hooks), len(hp._forward_hooks), len(hp._forward_pre_hooks)


def test_probe_metric_matches_decision_function(tiny):
    hook = hook_name("resid_post", tiny.cfg.n_layers - 1)
    probe = make_probe(tiny, hook)
    tokens = torch.tensor([CLEAN])
    with probe_metric(tiny, probe, 4) as metric:
        logits, cache = tiny.run_with_cache(tokens)
        value = metric(logits)
    expected = probe.decision_function(cache[hook][0, 4])
    assert value.ndim == 0
    torch.testing.assert_close(value.double(), expected.double(), atol=1e-4, rtol=0)


def test_probe_metric_with_tl_get_act_patch_resid_pre(tiny):
    layer = tiny.cfg.n_layers - 1
    probe = make_probe(tiny, hook_name("resid_pre", layer))
    clean, corrupted = torch.tensor([CLEAN]), torch.tensor([CORRUPTED])
    _, clean_cache = tiny.run_with_cache(clean)
    with probe_metric(tiny, probe, 5) as metric, torch.no_grad():
        clean_value = float(metric(tiny(clean)))
        corrupted_value = float(metric(tiny(corrupted)))
        out = get_act_patch_resid_pre(tiny, corrupted, clean_cache, metric)
    assert out.shape == (tiny.cfg.n_layers, len(CLEAN))
    # Patching the probe's own hook point at the probe's position gives the clean activation:
    # the capture hook sees the patched value even though the patch hook was added after it.
    assert out[layer, 5].item() == pytest.approx(clean_value, abs=1e-4)
    # Positions before the difference are identical in both runs: nothing changes.
    torch.testing.assert_close(
        out[:, :DIFF], torch.full((tiny.cfg.n_layers, DIFF), corrupted_value), atol=1e-4, rtol=0
    )


def test_patch_layer0_reproduces_clean(tiny):
    n_layers = tiny.cfg.n_layers
    probe = make_probe(tiny, hook_name("resid_post", n_layers - 1))
    clean, corrupted = torch.tensor([CLEAN]), torch.tensor([CORRUPTED])
    res = patch_probe_and_logit(
        tiny, clean, corrupted, probe, probe_position=6, answer_token_id=7, answer_position=6
    )
    assert res.probe_score.shape == res.answer_logit.shape == (n_layers, len(CLEAN))
    assert res.clean_probe_score != pytest.approx(res.corrupted_probe_score, abs=1e-3)
    # At layer 0 resid_pre is token + position embedding: the runs differ only at DIFF, so
    # patching DIFF there turns the corrupted run into the clean one, and any other position
    # patches in an identical activation (the corrupted run is unchanged).
    for metric, clean_v, corr_v in [
        (res.probe_score, res.clean_probe_score, res.corrupted_probe_score),
        (res.answer_logit, res.clean_answer_logit, res.corrupted_answer_logit),
    ]:
        expected = torch.full((len(CLEAN),), corr_v)
        expected[DIFF] = clean_v
        torch.testing.assert_close(metric[0].double(), expected.double(), atol=1e-4, rtol=0)
        # Before DIFF activations agree at every layer.
        torch.testing.assert_close(
            metric[:, :DIFF].double(),
            torch.full((n_layers, DIFF), corr_v, dtype=torch.float64),
            atol=1e-4,
            rtol=0,
        )

    # Patching every position at layer 0 at once is exactly the clean run.
    _, cache = tiny.run_with_cache(clean)
    name = hook_name("resid_pre", 0)
    with probe_metric(tiny, probe, 6) as metric, torch.no_grad():
        logits = tiny.run_with_hooks(corrupted, fwd_hooks=[(name, lambda act, hook: cache[name])])
        assert float(metric(logits)) == pytest.approx(res.clean_probe_score, abs=1e-4)
    assert float(logit_metric(7, 6)(logits)) == pytest.approx(res.clean_answer_logit, abs=1e-4)


def test_different_lengths_patch_common_prefix(tiny):
    probe = make_probe(tiny, hook_name("resid_pre", 1))
    metrics = {"logit": logit_metric(3, 2)}
    with probe_metric(tiny, probe, 2) as pm:
        out, clean, corrupted = patch_metrics(
            tiny, CLEAN, CORRUPTED[:5], {**metrics, "probe": pm}, hook_kind="resid_post"
        )
    assert out["logit"].shape == out["probe"].shape == (tiny.cfg.n_layers, 5)
    assert set(clean) == set(corrupted) == {"logit", "probe"}
    with pytest.raises(ValueError, match="common length"):
        patch_metrics(tiny, CLEAN, CORRUPTED[:5], metrics, positions=[5])


def test_probe_metric_hook_removed(tiny):
    hook = hook_name("resid_pre", 1)
    probe = make_probe(tiny, hook)
    before = capture_hooks(tiny, hook)
    with probe_metric(tiny, probe, 2) as metric:
        assert capture_hooks(tiny, hook) != before
        tiny.reset_hooks()  # permanent: survives TL's resets
        tiny(torch.tensor([CLEAN]))
        metric(None)
    assert capture_hooks(tiny, hook) == before
    with pytest.raises(RuntimeError):
        metric(None)

    with pytest.raises(KeyError), probe_metric(tiny, probe, 2):
        assert capture_hooks(tiny, hook) != before
        raise KeyError("boom")
    assert capture_hooks(tiny, hook) == before


def test_probe_metric_needs_a_forward(tiny):
    probe = make_probe(tiny, hook_name("resid_pre", 0))
    with probe_metric(tiny, probe, 0) as metric, pytest.raises(RuntimeError, match="no forward"):
        metric(None)
    with pytest.raises(ValueError, match="hook"):
        probe_metric(tiny, Probe(probe.kind, probe.weight, probe.bias, probe.mean, probe.scale), 0)


def fake_result(n_layers=2, n_pos=4, offset=0.0):
    score = torch.arange(n_layers * n_pos, dtype=torch.float64).reshape(n_layers, n_pos) + offset
    return PatchResult(
        probe_score=score,
        answer_logit=-score,
        clean_probe_score=1.0 + offset,
        corrupted_probe_score=-1.0,
        clean_answer_logit=2.0,
        corrupted_answer_logit=0.0,
        labels=[f"t{i}" for i in range(n_pos)],
    )


def test_patch_result_dataframe_plot_average():
    res = fake_result()
    df = res.to_dataframe()
    assert len(df) == 8
    assert {"layer", "position", "token", "probe_score", "answer_logit"} <= set(df.columns)
    assert df.loc[(df.layer == 1) & (df.position == 2), "probe_score"].item() == 6.0
    fig = res.figure(title="example")  # both panels, built without pyplot
    assert len([ax for ax in fig.axes if ax.get_title()]) == 2
    ax = res.plot(title="example")  # a pyplot figure (shows inline in notebooks)
    assert ax.get_title() == "probe score (logit P(correct))"
    assert len([a for a in ax.figure.axes if a.get_title()]) == 2
    plt.close(ax.figure)

    avg = PatchResult.average([fake_result(n_pos=4), fake_result(n_pos=3, offset=1.0)])
    assert avg.shape == (2, 3)
    assert avg.positions == [-3, -2, -1]
    assert avg.n_examples == 2
    # the 4-position example keeps its last 3 columns
    torch.testing.assert_close(
        avg.probe_score[0], torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64)
    )
    assert avg.clean_probe_score == pytest.approx(1.5)
    plt.close(avg.plot().figure)
    with pytest.raises(ValueError):
        PatchResult.average([fake_result(n_layers=2), fake_result(n_layers=3)])
    with pytest.raises(ValueError):
        PatchResult.average([])


@pytest.mark.parametrize("moved", [False, True])
def test_batched_patching_equals_one_cell_at_a_time(tiny, moved):
    probe = make_probe(tiny, hook_name("resid_post", tiny.cfg.n_layers - 1))
    clean, corrupted = CLEAN + [70], CORRUPTED
    positions = [1, 3, 4, 6]
    kw = {"clean_positions": [2, 3, 5, 7]} if moved else {}
    outs = []
    for batch_size in (1, 3):
        with probe_metric(tiny, probe, 5) as pm:
            metrics = {"probe": pm, "logit": logit_metric(7, 4)}
            out, _, corr = patch_metrics(
                tiny,
                clean,
                corrupted,
                metrics,
                "resid_pre",
                [0, 1],
                positions,
                batch_size=batch_size,
                **kw,
            )
        outs.append((out, corr))
    for k in ("probe", "logit"):
        torch.testing.assert_close(outs[0][0][k], outs[1][0][k], atol=1e-3, rtol=1e-4)
    assert outs[0][1] == outs[1][1]
