"""Steering: exact arithmetic per scope, cache/no-cache and batch/alone agreement, restoration."""

import pytest
import torch

from tl_truth.answers.generation import GenerationConfig, generate_ids
from tl_truth.intervention.directions import Direction, from_probe, negated, random_like
from tl_truth.intervention.steering import Steering, steer, steering_hook
from tl_truth.probing.probe import Probe

pytestmark = pytest.mark.backend

PROMPTS = [[0, 5, 9, 13], [0, 7], [0, 20, 21, 22, 23, 24, 25], [0, 3, 3, 3, 3]]
HOOK = "blocks.0.hook_resid_post"
LAST = "blocks.1.hook_resid_post"


def _capture(store):
    def hook(act, hook):
        store.append(act.detach().clone())

    return hook


def _resid(model, tokens, name, fwd_hooks=()):
    store = []
    with torch.no_grad(), model.hooks(fwd_hooks=[*fwd_hooks, (name, _capture(store))]):
        model(tokens)
    return store[0]


def _vector(model, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(model.cfg.d_model, generator=gen)


def _greedy(model, prompts, use_cache=True, n=6):
    cfg = GenerationConfig(max_new_tokens=n, batch_size=8, use_cache=use_cache)
    out = generate_ids(model, prompts, cfg, progress=False)
    return [s[0]["answer_token_ids"] for s in out]


def _strong(model, name=HOOK, factor=3.0, seed=0):
    """A random vector 3x the residual norm: strong enough to change greedy output."""
    norm = _resid(model, torch.tensor([PROMPTS[2]]), name).norm(dim=-1).mean()
    v = _vector(model, seed)
    return v / v.norm() * norm * factor


# ---------------------------------------------------------------------------------------------
# Exact arithmetic on a plain forward (sequence index = position)

LENGTHS = [4, 5]
SCOPE_MASKS = {
    "all": lambda p, n: True,
    "prompt": lambda p, n: p < n,
    "last_prompt": lambda p, n: p == n - 1,
    "generated": lambda p, n: p >= n,
}


@pytest.mark.parametrize(
    "scope", ["all", "prompt", "last_prompt", "generated", "explicit", "shared"]
)
def test_exact_addition_at_scope(tiny, scope):
    tokens = torch.tensor([[0, 5, 9, 13, 7, 8, 2], [0, 3, 3, 3, 3, 11, 12]])
    alpha, v = 2.5, _vector(tiny)
    if scope == "explicit":
        steering = Steering([(LAST, alpha * v)], scope=[[0, 3], [6]])
        want = lambda r, p: p in ([0, 3], [6])[r]  # noqa: E731
    elif scope == "shared":
        steering = Steering([(LAST, alpha * v)], positions=[1, 2])
        want = lambda r, p: p in (1, 2)  # noqa: E731
    else:
        steering = Steering([(LAST, alpha * v)], scope=scope, prompt_lengths=LENGTHS)
        want = lambda r, p: SCOPE_MASKS[scope](p, LENGTHS[r])  # noqa: E731
    base = _resid(tiny, tokens, LAST)
    # The steering hook is registered first, so the capture hook on the same point sees its output.
    with steering.apply(tiny):
        steered = _resid(tiny, tokens, LAST)
    assert torch.allclose(_resid(tiny, tokens, LAST, steering.hooks()), steered)
    for r in range(2):
        for p in range(tokens.shape[1]):
            expect = base[r, p] + (alpha * v if want(r, p) else 0)
            assert torch.allclose(steered[r, p], expect, atol=1e-5), (r, p)


def test_prompt_scope_needs_lengths_outside_generation(tiny):
    with pytest.raises(ValueError, match="prompt_lengths"):
        _resid(
            tiny, torch.tensor([PROMPTS[0]]), LAST, [(LAST, steering_hook(_vector(tiny), "prompt"))]
        )
    with pytest.raises(KeyError):
        with Steering([("blocks.0.hook_nope", _vector(tiny))]).apply(tiny):
            pass
    with pytest.raises(ValueError, match="scope"):
        Steering([(LAST, _vector(tiny))], scope="everywhere")


def test_several_hook_points(tiny):
    tokens = torch.tensor([PROMPTS[2]])
    v0, v1 = _vector(tiny, 1), _vector(tiny, 2)
    with Steering([(HOOK, v0), (LAST, v1)]).apply(tiny):
        pre = _resid(tiny, tokens, HOOK)
    with Steering([(HOOK, v0)]).apply(tiny):
        only0 = _resid(tiny, tokens, LAST)
    with Steering([(HOOK, v0), (LAST, v1)]).apply(tiny):
        both = _resid(tiny, tokens, LAST)
    assert torch.allclose(pre, _resid(tiny, tokens, HOOK) + v0, atol=1e-5)
    assert torch.allclose(both, only0 + v1, atol=1e-5)


# ---------------------------------------------------------------------------------------------
# Inside generation: absolute positions, cache and padding


@pytest.mark.parametrize("scope", ["generated", "prompt", "last_prompt"])
def test_cache_and_nocache_agree_left_padded(tiny, scope):
    vec = _strong(tiny)
    with steer(tiny, vec, hook=HOOK, scope=scope):
        cached = _greedy(tiny, PROMPTS, use_cache=True)
        uncached = _greedy(tiny, PROMPTS, use_cache=False)
    assert cached == uncached


def test_steering_changes_generation(tiny):
    """Guards the agreement tests against being vacuous: the strong vector does change output."""
    vec = _strong(tiny)
    plain = _greedy(tiny, PROMPTS)
    for scope in ("generated", "prompt", "last_prompt"):
        with steer(tiny, vec, hook=HOOK, scope=scope):
            assert _greedy(tiny, PROMPTS) != plain, scope


@pytest.mark.parametrize("scope", ["generated", "last_prompt", [1, 2]], ids=str)
def test_batch_equals_alone(tiny, scope):
    vec = _strong(tiny)
    with steer(tiny, vec, hook=HOOK, scope=scope):
        batched = _greedy(tiny, PROMPTS)
        alone = [_greedy(tiny, [p])[0] for p in PROMPTS]
    assert batched == alone


def test_padding_untouched_in_generation(tiny):
    """Left padding (negative absolute positions) is never steered, even for scope 'all'."""
    seen = []

    def record(act, hook):
        seen.append(act.detach().clone())

    vec = _strong(tiny)
    with tiny.hooks(fwd_hooks=[(HOOK, record)]):
        _greedy(tiny, PROMPTS[:2], n=1)
    with Steering([(HOOK, vec)]).apply(tiny), tiny.hooks(fwd_hooks=[(HOOK, record)]):
        _greedy(tiny, PROMPTS[:2], n=1)
    base, steered = seen
    # Rows are sorted by length: row 0 is [0, 7] with 2 pads in a width-4 batch.
    assert torch.allclose(steered[0, :2], base[0, :2], atol=1e-6)
    assert torch.allclose(steered[0, 2:], base[0, 2:] + vec, atol=1e-4)


# ---------------------------------------------------------------------------------------------
# Restoration


def test_restored_after_exit_and_exception(tiny):
    tokens = torch.tensor([PROMPTS[2]])
    with torch.no_grad():
        before = tiny(tokens)
    plain = _greedy(tiny, PROMPTS)
    vec = _strong(tiny)
    with pytest.raises(RuntimeError, match="boom"):
        with steer(tiny, vec, hook=HOOK):
            with torch.no_grad():
                assert not torch.allclose(tiny(tokens), before)
            raise RuntimeError("boom")
    assert all(not hp.fwd_hooks for hp in tiny.hook_dict.values())
    with torch.no_grad():
        assert torch.equal(tiny(tokens), before)
    with steer(tiny, vec, hook=HOOK):
        pass
    assert _greedy(tiny, PROMPTS) == plain
    with steer(tiny, vec, hook=HOOK, alpha=0.0), torch.no_grad():
        assert torch.allclose(tiny(tokens), before, atol=1e-6)


# ---------------------------------------------------------------------------------------------
# Directions


def _probe_and_acts(kind):
    gen = torch.Generator().manual_seed(0)
    X = torch.randn(60, 8, generator=gen) * torch.linspace(0.5, 3, 8)
    y = (X[:, 0] + 0.3 * torch.randn(60, generator=gen) > 0).long()
    probe = Probe.from_data(X, y, kind=kind, hook=LAST, layer=1, position="last_prompt")
    return probe, X


@pytest.mark.parametrize("kind", ["logistic", "mean_diff"])
def test_direction_from_probe(kind):
    probe, X = _probe_and_acts(kind)
    d = from_probe(probe, X)
    assert d.vector.norm() == pytest.approx(1.0, abs=1e-6)
    assert (d.hook, d.layer, d.source) == (LAST, 1, kind)
    proj = X.float() @ d.vector
    assert d.projection_std == pytest.approx(float(proj.std()), rel=1e-5)
    assert d.projection_mean == pytest.approx(float(proj.mean()), abs=1e-5)
    assert d.metadata["projection_std_measured"] is True
    assert torch.allclose(d.scaled(2.0), d.vector * 2.0 * d.projection_std)
    assert torch.allclose(d.scaled(2.0, units="abs"), d.vector * 2.0)
    # Positive direction means "correct": correct examples project higher.
    assert proj[probe.predict(X) == 1].mean() > proj[probe.predict(X) == 0].mean()
    bare = from_probe(probe)
    assert bare.projection_std == 1.0 and bare.metadata["projection_std_measured"] is False


def test_random_like_and_negated():
    probe, X = _probe_and_acts("mean_diff")
    d = from_probe(probe, X)
    rands = random_like(d, n=3, seed=1)
    assert len(rands) == 3
    for r in rands:
        assert r.vector.norm() == pytest.approx(1.0, abs=1e-6)
        assert (r.hook, r.layer, r.projection_std, r.source) == (
            d.hook,
            d.layer,
            d.projection_std,
            "random",
        )
        assert r.scaled(4.0).norm() == pytest.approx(float(d.scaled(4.0).norm()), rel=1e-5)
    assert not torch.allclose(rands[0].vector, rands[1].vector)
    other = random_like(d, n=1, seed=2)[0]
    assert not torch.allclose(other.vector, rands[0].vector)
    assert torch.equal(random_like(d, n=1, seed=1)[0].vector, rands[0].vector)
    neg = negated(d)
    assert torch.equal(neg.vector, -d.vector) and neg.source == "negated"
    assert neg.projection_std == d.projection_std
    with pytest.raises(ValueError):
        Direction(torch.zeros(4))


def test_steer_with_direction_uses_sd_units(tiny):
    d = Direction(_vector(tiny), hook=LAST, layer=1, projection_std=0.5)
    tokens = torch.tensor([PROMPTS[0]])
    base = _resid(tiny, tokens, LAST)
    with steer(tiny, d, alpha=4.0):
        steered = _resid(tiny, tokens, LAST)
    assert torch.allclose(steered, base + 2.0 * d.vector, atol=1e-5)


def test_mass_mean_and_contrastive_recover_a_planted_direction():
    """Anisotropic classes: the truth shift lies along u, while most variance (shared by both
    classes) lies along w. Mass-mean and contrastive directions recover u; a logistic probe's
    normal is tilted by the anisotropy (ITI's argument), and a random direction is not u."""
    from tl_truth.intervention import contrastive, mass_mean, random_like
    from tl_truth.probing import Probe

    g = torch.Generator().manual_seed(0)
    d, n = 16, 2000
    u = torch.zeros(d)
    u[0] = 1.0
    w = torch.zeros(d)
    w[0], w[1] = 0.6, 0.8  # correlated with u: the noise leaks into the probe's normal
    y = torch.arange(n) % 2
    base = torch.randn(n, d, generator=g) * 0.3 + torch.randn(n, 1, generator=g) * 2.0 * w
    acts = base + y[:, None] * 1.0 * u
    mm = mass_mean(acts, y, hook="blocks.0.hook_resid_post", layer=0)
    assert float(mm.vector @ u) > 0.95 and mm.metadata["n_right"] == n // 2
    pairs = contrastive(base[:50] + u, base[:50])
    assert float(pairs.vector @ u) > 0.999
    probe = Probe.from_data(acts, y, kind="logistic")
    cos_probe = float(torch.nn.functional.cosine_similarity(probe.direction.float(), u, dim=0))
    assert cos_probe < float(mm.vector @ u)
    control = random_like(mm, n=1)[0]
    assert abs(float(control.vector @ u)) < 0.6 and control.projection_std == mm.projection_std
    with pytest.raises(ValueError, match="both right and wrong"):
        mass_mean(acts, torch.ones(n))


def test_probes_from_store_mass_mean_family(tmp_path):
    """`steer --direction mass_mean`: the direction at each refitted cell is the normalised
    difference of the train split's class means there, the probe is still fitted."""
    from tl_truth.intervention.store_probes import probes_from_store
    from tl_truth.models import model_info
    from tl_truth.probing import capture
    from tl_truth.testing import tiny_model

    model = tiny_model("llama")
    records = [
        {"id": str(i), "task": "demo", "split": "train" if i < 12 else "test",
         "correct": i % 2 == 0, "prompt_token_ids": [1, 20 + i, 30, 40],
         "answer_token_ids": [50 + i, 60]}
        for i in range(16)
    ]  # fmt: skip
    store = capture(model, records, tmp_path, positions=["first_answer"], progress=False)
    got = probes_from_store(
        store, [1], "first_answer", expect_model=model_info(model), direction="mass_mean"
    )
    probe, direction = got[1]
    x, rows = store.cell("blocks.1.hook_resid_post", "first_answer")
    train = store.split_mask("train")[rows]
    y = store.labels[rows][train].bool()
    xt = x[train].float()
    gap = xt[y].mean(0) - xt[~y].mean(0)
    assert direction.source == "mass_mean" and probe.kind == "logistic"
    torch.testing.assert_close(direction.vector, gap / gap.norm())
    with pytest.raises(ValueError, match="mass_mean"):
        probes_from_store(store, [1], "first_answer", direction="heads")
