"""The train-task x test-task matrix on a synthetic activation store with known structure."""

import json

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from tl_truth.probing.activations import META_FILE, STORE_VERSION, ActivationStore
from tl_truth.studies.generalization import generalization_matrix

D = 16
HOOKS = ["blocks.0.hook_resid_post", "blocks.1.hook_resid_post"]
POSITIONS = ["exact_first", "exact_last"]
MODEL = {
    "name": "synthetic",
    "backend": "bridge",
    "processing": "hf",
    "fingerprint": "f",
    "n_layers": 2,
    "d_model": D,
    "chat": False,
}


def synthetic_store(path, tasks):
    """Tasks "a" and "b" encode correctness on dimension 0 (at blocks.1 / exact_last), "c" on
    dimension 1; "z" has no correct answers. The logit scores carry no signal."""
    rng = np.random.default_rng(0)
    examples, records, acts = [], [], []
    for task in tasks:
        for i in range(80):
            correct = task != "z" and i % 2 == 0
            x = rng.normal(size=(2, 2, D)).astype(np.float32)
            dim = 1 if task == "c" else 0
            x[1, 1, dim] += 2.5 if correct else -2.5
            split = "test" if i % 4 in (1, 2) else "train"
            examples.append(
                {"id": str(i), "task": task, "split": split, "correct": correct, "sample_index": 0}
            )
            records.append(
                {
                    "id": str(i),
                    "task": task,
                    "skill": "math" if task == "c" else "factual",
                    "correct": correct,
                    "prompt_token_ids": [1, 2],
                    "answer_token_ids": [3, 4, 5],
                    "token_logprobs": list(np.log(rng.uniform(0.1, 1, size=3))),
                    "exact_answer_token_span": [3, 4],
                }
            )
            acts.append(x)
    n = len(examples)
    meta = {
        "version": STORE_VERSION,
        "model": MODEL,
        "hooks": HOOKS,
        "positions": POSITIONS,
        "dtype": "float32",
        "d_model": D,
        "shard_size": n,
        "examples": examples,
        "shards": [{"file": "shard_00000.safetensors", "start": 0, "end": n}],
    }
    path.mkdir(parents=True)
    (path / META_FILE).write_text(json.dumps(meta))
    save_file(
        {
            "acts": torch.tensor(np.stack(acts)),
            "valid": torch.ones(n, 2, dtype=torch.bool),
            "rows": torch.arange(n),
        },
        str(path / "shard_00000.safetensors"),
    )
    return ActivationStore.open(path), records


def test_matrix_structure(tmp_path):
    store, records = synthetic_store(tmp_path / "s", ["a", "b", "c", "z"])
    g = generalization_matrix(store, records, positions=POSITIONS, n_boot=100, progress=False)
    assert g.tasks == ["a", "b", "c", "z"]
    assert g.cells["a"]["hook"] == HOOKS[1] and g.cells["a"]["position"] == "exact_last"
    a, b, c, z = range(4)
    assert g.auc[a][a] > 0.95 and g.auc[a][b] > 0.95  # same direction: transfers
    assert g.auc[c][c] > 0.95
    assert abs(g.auc[a][c] - 0.5) < 0.25 and abs(g.auc[c][a] - 0.5) < 0.25  # does not
    assert "skipped" in g.cells["z"] and all(x is None for x in g.auc[z])  # no positives
    assert all(g.auc[i][z] is None for i in range(4))  # single-class test task
    assert g.n_test["a"]["z"] == [0, 40]
    lo, hi = g.ci[a][b]
    assert lo <= g.auc[a][b] <= hi
    assert g.auc_minus_logit[a][b] == pytest.approx(g.auc[a][b] - g.logit_auc[a][b], abs=1e-3)
    s = g.skill_summary()
    assert s["same_skill"]["n_pairs"] == 2 and s["cross_skill"]["n_pairs"] == 4
    assert s["same_skill"]["mean"] > s["cross_skill"]["mean"]
    md = g.to_markdown()
    assert "no probe" in md and "c (math)" in md
    assert len(g.to_dataframe()) == 16
    g.save(tmp_path / "out")
    doc = json.loads((tmp_path / "out" / "generalization.json").read_text())
    assert {"tasks", "auc", "auc_minus_logit", "logit_auc", "skills"} <= set(doc)


def test_records_must_follow_the_store(tmp_path):
    store, records = synthetic_store(tmp_path / "s", ["a", "b"])
    with pytest.raises(ValueError, match="do not follow"):
        generalization_matrix(store, records[::-1], progress=False)
    with pytest.raises(ValueError, match="none of the positions"):
        generalization_matrix(store, records, positions=["last_prompt"], progress=False)


def test_cell_by_key(tmp_path):
    store, _ = synthetic_store(tmp_path / "s", ["a", "b"])
    X, available = store.cell_by_key(HOOKS[1], "exact_last", [("b", "3"), ("c", "0"), ("a", "0")])
    assert available == [True, False, True]
    x, rows = store.cell(HOOKS[1], "exact_last")
    torch.testing.assert_close(X[0], x[80 + 3])
    torch.testing.assert_close(X[2], x[0])
    assert not X[1].any()
    with pytest.raises(ValueError, match="was not captured"):
        store.cell_by_key(HOOKS[0], "last_prompt", [])
