"""Attention-head (ITI) directions: a z shift equals its W_O image at hook_attn_out, the
informative head ranks first, and the controls match the push in size."""

import pytest
import torch

from tl_truth.intervention import heads as heads_mod
from tl_truth.intervention.heads import (
    HeadDirections,
    attn_out_hook,
    head_directions,
    head_to_resid,
    rank_heads,
    z_hook,
)
from tl_truth.intervention.steering import Steering

pytestmark = pytest.mark.backend

TOKENS = torch.tensor([[0, 5, 9, 13, 40, 41], [0, 7, 8, 90, 91, 92]])


def _logits(model, fwd_hooks=()):
    with torch.no_grad(), model.hooks(fwd_hooks=list(fwd_hooks)):
        return model(TOKENS)


def _shift_z(head, v):
    def hook(z, hook):
        z = z.clone()
        z[:, :, head] += v.to(z.dtype)
        return z

    return hook


def test_z_shift_equals_w_o_image_at_attn_out(tiny):
    """Shifting head h's z by v == adding v @ W_O[L, h] at blocks.L.hook_attn_out (where the
    attention output goes straight into the residual stream)."""
    arch = tiny.cfg.original_architecture or getattr(tiny.cfg, "architecture", None) or ""
    if arch.startswith("Gemma"):
        pytest.skip("Gemma normalises attn_out after W_O: heads steer at hook_z instead")
    layer, head = 1, 2
    v = torch.randn(tiny.cfg.d_head, generator=torch.Generator().manual_seed(0)) * 5
    via_z = _logits(tiny, [(z_hook(layer), _shift_z(head, v))])
    resid = head_to_resid(tiny, layer, head, v)
    via_out = _logits(tiny, [(attn_out_hook(layer), lambda a, hook: a + resid.to(a.dtype))])
    plain = _logits(tiny)
    assert not torch.allclose(via_z, plain, atol=1e-4)  # the shift does something
    assert torch.allclose(via_z, via_out, atol=1e-5, rtol=1e-4)


def test_steering_at_hook_z_shifts_only_the_chosen_head(tiny):
    """A flat head-major vector at hook_z (what `HeadDirections.steering` makes) is exactly
    the per-head z shift, on every architecture, and is undone on exit."""
    layer, head = 1, 2
    n_heads, d_head = tiny.cfg.n_heads, tiny.cfg.d_head
    v = torch.randn(d_head, generator=torch.Generator().manual_seed(1)) * 5
    flat = torch.zeros(n_heads * d_head)
    flat[head * d_head : (head + 1) * d_head] = v
    manual = _logits(tiny, [(z_hook(layer), _shift_z(head, v))])
    with torch.no_grad(), Steering([(z_hook(layer), flat)]).apply(tiny):
        steered = tiny(TOKENS)
    assert torch.allclose(steered, manual, atol=1e-6)
    assert torch.allclose(_logits(tiny), tiny(TOKENS).detach(), atol=1e-6)


def _planted(n=80, n_layers=2, n_heads=4, d_head=8, layer=1, head=2, seed=0):
    """z activations where only (layer, head) separates right from wrong, along `u`."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 2 == 0
    acts = torch.randn(n, n_layers * n_heads * d_head, generator=g)
    u = torch.randn(d_head, generator=g)
    u = u / u.norm()
    z = acts.view(n, n_layers, n_heads, d_head)
    z[:, layer, head] += 2.5 * torch.where(y, 1.0, -1.0)[:, None] * u
    return acts.view(n, n_layers, n_heads * d_head), y, u


def test_rank_heads_puts_the_informative_head_first():
    acts, y, _ = _planted()
    flat = acts.view(len(y), -1, 8)  # [n, layers * heads, d_head]
    acc = rank_heads(flat, y, torch.arange(len(y)) >= 56)
    assert acc.argmax().item() == 1 * 4 + 2
    assert acc[6] > 0.9 and acc.median() < 0.8


def test_head_directions_rank_and_recover_a_planted_head(monkeypatch):
    from tl_truth.testing import tiny_model

    model = tiny_model("llama")
    acts, y, u = _planted()
    records = [{"correct": bool(c)} for c in y]

    def fake_capture(model_, recs, hooks, position, batch_size, progress):
        assert hooks == [z_hook(0), z_hook(1)] and position == "exact_last"
        return acts, torch.ones(len(recs), dtype=torch.bool)

    monkeypatch.setattr(heads_mod, "capture_at", fake_capture)
    ranked = head_directions(model, records, layers=[0, 1])
    best = ranked.heads[0]
    assert (best.layer, best.head) == (1, 2)
    assert best.direction.hook == "blocks.1.attn.hook_z"
    assert torch.nn.functional.cosine_similarity(best.direction.vector, u, dim=0) > 0.95
    assert len(ranked.heads) == 8 and len(head_directions(model, records, [0, 1], k=3).heads) == 3


def _directions(model):
    acts, y, _ = _planted()
    monkey = heads_mod.capture_at
    heads_mod.capture_at = lambda *a, **k: (acts, torch.ones(len(y), dtype=torch.bool))
    try:
        return head_directions(model, [{"correct": bool(c)} for c in y], layers=[0, 1])
    finally:
        heads_mod.capture_at = monkey


def test_units_and_norm_matched_controls():
    from tl_truth.testing import tiny_model

    model = tiny_model("llama")
    ranked: HeadDirections = _directions(model)
    top = ranked.top(3)
    # "sd": each head moved by alpha projection SDs, in its slice of its layer's hook_z
    steer = ranked.steering(model, 3, alpha=2.0, units="sd")
    want: dict = {}
    for h in top:
        flat = want.setdefault(z_hook(h.layer), torch.zeros(4 * 8))
        flat[h.head * 8 : (h.head + 1) * 8] += 2.0 * h.direction.projection_std * h.direction.vector
    assert {n for n, _ in steer.vectors} == set(want)
    for name, vec in steer.vectors:
        assert torch.allclose(vec, want[name], atol=1e-5)

    # "abs": the W_O images of the shifts sum to a residual push of norm alpha (controls too)
    def resid_norm(s):
        total = torch.zeros(model.cfg.d_model)
        for name, vec in s.vectors:
            layer = int(name.split(".")[1])
            for h, z in enumerate(vec.view(4, 8)):
                total += head_to_resid(model, layer, h, z)
        return float(total.norm())

    assert abs(resid_norm(ranked.steering(model, 3, alpha=7.0, units="abs")) - 7.0) < 1e-4
    assert abs(ranked.push_norm(model, 3, 2.0, "sd") - resid_norm(steer)) < 1e-4
    for c in ranked.controls(model, 3, alpha=7.0, units="abs", n=2):
        assert abs(resid_norm(c) - 7.0) < 1e-4
    # "sd" controls: random z directions with each head's own projection SD; the i-th is
    # the same whatever n
    c1 = ranked.controls(model, 3, alpha=2.0, units="sd", n=1, seed=5)[0]
    c3 = ranked.controls(model, 3, alpha=2.0, units="sd", n=3, seed=5)
    assert all(torch.equal(a[1], b[1]) for a, b in zip(c1.vectors, c3[0].vectors, strict=True))
    assert not torch.allclose(c3[0].vectors[0][1], c3[1].vectors[0][1])
    assert not torch.allclose(c1.vectors[0][1], steer.vectors[0][1])
