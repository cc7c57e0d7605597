"""`tl-truth` command line: generate, run, steer, resample, select, generalize, patch."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from tl_truth.models import BUILTIN_MODELS, DEFAULT_MODEL


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--model",
        default=DEFAULT_MODEL,
        help=f"built-in ({', '.join(BUILTIN_MODELS)}), HF directory, .gguf file or hub id",
    )
    p.add_argument("--backend", choices=["bridge", "hooked"], default="bridge")
    p.add_argument(
        "--compat",
        action="store_true",
        help="TransformerBridge compatibility mode (HookedTransformer-style weights)",
    )
    p.add_argument(
        "--dataset",
        default="capitals",
        help="built-in task(s), format:path, or a CSV/JSONL file; comma-separated",
    )
    p.add_argument("--limit", type=int, default=None, help="questions per dataset part")
    p.add_argument("--out", default="runs/latest", help="output directory")
    p.add_argument("--prompt", default="auto", help="auto | chat | qa | a template with {question}")
    p.add_argument("--max-new-tokens", type=int, default=48)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument(
        "--no-model-extract",
        action="store_true",
        help="skip the model-based exact-answer extraction fallback",
    )
    p.add_argument("--device", default=None)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def _load_model(args: argparse.Namespace):
    """The model named by the shared options (threads set first: loading is CPU work too)."""
    import torch

    from tl_truth.models import load_model

    if args.threads:
        torch.set_num_threads(args.threads)
    return load_model(
        args.model, backend=args.backend, device=args.device, compatibility_mode=args.compat
    )


def cmd_generate(args: argparse.Namespace) -> int:
    from tl_truth.answers.generation import GenerationConfig
    from tl_truth.answers.prompts import parse_format
    from tl_truth.answers.run import answer_questions
    from tl_truth.data.load import load_questions

    dataset = load_questions(args.dataset, args.limit)
    t0 = time.perf_counter()
    model = _load_model(args)
    load_s = time.perf_counter() - t0
    run = answer_questions(
        model,
        dataset,
        GenerationConfig(max_new_tokens=args.max_new_tokens, batch_size=args.batch_size),
        parse_format(args.prompt, model),
        extract_with_model=not args.no_model_extract,
        progress=not args.quiet,
    )
    run.summary["timings"]["load_model_s"] = round(load_s, 2)
    out = run.save(args.out)
    s = run.summary
    print(
        f"\n{s['model']['name']} ({s['model']['backend']}) on {s['dataset']['name']}: "
        f"{s['n']} answers"
    )
    print(f"{'task':<14}{'n':>6}{'accuracy':>10}{'refusals':>10}{'exact-ans':>11}")
    for task, b in s["per_task"].items():
        print(
            f"{task:<14}{b['n']:>6}{b['accuracy']:>10.3f}"
            f"{b['categories'].get('refusal', 0):>10}{b['exact_answer_rate']:>11.3f}"
        )
    print(f"exact-answer sources: {json.dumps(s['exact_answer_sources'])}")
    print(f"wrote {out / 'generations.jsonl'} and {out / 'summary.json'}")
    return 0


def parse_layers(spec: str, n_layers: int) -> list[int]:
    """`all`, `every:K` (0, K, 2K, ... and the last layer) or `0,5,10`."""
    if spec == "all":
        return list(range(n_layers))
    if spec.startswith("every:"):
        step = int(spec.split(":", 1)[1])
        return sorted(set(range(0, n_layers, step)) | {n_layers - 1})
    layers = [int(x) for x in spec.split(",") if x.strip()]
    bad = [x for x in layers if not 0 <= x < n_layers]
    if bad or not layers:
        raise ValueError(f"--layers {spec!r}: layers must be in 0..{n_layers - 1}")
    return layers


def cmd_run(args: argparse.Namespace) -> int:
    from tl_truth.answers.generation import GenerationConfig
    from tl_truth.answers.positions import NAMED_POSITIONS
    from tl_truth.answers.prompts import parse_format
    from tl_truth.data.load import load_questions
    from tl_truth.models import hook_name
    from tl_truth.studies.main_job import run_all

    dataset = load_questions(args.dataset, args.limit)
    model = _load_model(args)
    kinds = [k.strip() for k in args.hooks.split(",") if k.strip()]
    layers = parse_layers(args.layers, model.cfg.n_layers)
    hooks = [hook_name(k, layer) for k in kinds for layer in layers]
    positions = tuple(args.positions.split(",")) if args.positions else NAMED_POSITIONS
    report = run_all(
        model,
        dataset,
        args.out,
        GenerationConfig(max_new_tokens=args.max_new_tokens, batch_size=args.batch_size),
        parse_format(args.prompt, model),
        hooks=hooks,
        positions=positions,
        n_boot=args.n_boot,
        p_true=not args.no_p_true,
        extract_with_model=not args.no_model_extract,
        progress=not args.quiet,
    )
    print()
    print(report.to_markdown())
    print(
        f"Report: {Path(args.out) / 'report.md'} (also report.json, probe_grid.png, best_probe.*)"
    )
    return 0


def cmd_steer(args: argparse.Namespace) -> int:
    from tl_truth.answers.generation import GenerationConfig
    from tl_truth.data.load import load_questions
    from tl_truth.intervention.directions import from_probe
    from tl_truth.models import model_info
    from tl_truth.probing.activations import ActivationStore
    from tl_truth.probing.probe import Probe
    from tl_truth.studies.steering_eval import steering_sweep

    if bool(args.probe) == bool(args.from_run):
        raise ValueError("give exactly one of --probe PATH or --from-run DIR")
    model = _load_model(args)
    info = model_info(model)
    probes = {}
    if args.probe:
        probe = Probe.load(args.probe, expect_model=info)
        probes[probe.layer] = (probe, from_probe(probe))
    else:
        run_dir = Path(args.from_run)
        store = ActivationStore.open(run_dir / "activations")
        report = json.loads((run_dir / "report.json").read_text())
        position = (report.get("best") or report["selected"]["any"])["position"]
        train = store.split_mask("train")
        layers = (
            parse_layers(args.layers, info.n_layers) if args.layers else [report["best"]["layer"]]
        )
        for layer in layers:
            hook = f"blocks.{layer}.hook_resid_post"
            if hook not in store.hooks:
                raise ValueError(f"{hook} was not captured in {run_dir}; captured: {store.hooks}")
            x, rows = store.cell(hook, position)
            keep = train[rows]
            probe = Probe.from_data(
                x[keep],
                store.labels[rows][keep],
                hook=hook,
                layer=layer,
                position=position,
                model=store.model,
            )
            probe.check_compatible(info)
            probes[layer] = (probe, from_probe(probe, x[keep]))
    dataset = load_questions(args.dataset, None)
    held_out = dataset.test
    if args.limit:
        held_out = held_out.limit(args.limit)
    alphas = [float(a) for a in args.alphas.split(",")]
    result = steering_sweep(
        model,
        held_out,
        probes,
        alphas,
        scope=args.scope,
        units=args.units,
        n_random=args.n_random,
        config=GenerationConfig(max_new_tokens=args.max_new_tokens, batch_size=args.batch_size),
        progress=not args.quiet,
    )
    result.meta = {
        "model": info.to_dict(),
        "dataset": args.dataset,
        "probe_position": next(iter(probes.values()))[0].position,
    }
    out = result.save(args.out)
    print(result.to_markdown())
    print(f"Report: {out / 'steering.md'} (also steering.json, steering.png)")
    return 0


# ---------------------------------------------------------------------------------------------
# "Knows more than it shows": resample -> error types -> select; generalize; patch


def _run_probe(run_dir: Path, info):
    """The best probe a `tl-truth run` saved (trained on its train split)."""
    from tl_truth.probing.probe import Probe

    path = run_dir / "best_probe"
    if not path.with_suffix(".json").exists():
        raise FileNotFoundError(f"{run_dir} has no best_probe.json: run `tl-truth run` first")
    return Probe.load(path, expect_model=info)


def cmd_resample(args: argparse.Namespace) -> int:
    from tl_truth.answers.generation import GenerationConfig
    from tl_truth.answers.prompts import parse_format
    from tl_truth.answers.run import AnswerRun
    from tl_truth.data.load import load_questions
    from tl_truth.models import model_info
    from tl_truth.probing.activations import ActivationStore
    from tl_truth.probing.scoring import score_records
    from tl_truth.studies.error_types import error_type_report
    from tl_truth.studies.resampling import resample

    dataset = load_questions(args.dataset, args.limit)
    model = _load_model(args)
    info = model_info(model)
    greedy, probe, max_new = None, None, args.max_new_tokens
    run_dir = Path(args.from_run) if args.from_run else None
    if run_dir:
        run = AnswerRun.load(run_dir)
        greedy = run.records
        # samples must be generated like the greedy answers they are compared with
        max_new = run.summary.get("generation", {}).get("max_new_tokens", max_new)
        probe = _run_probe(run_dir, info)
    config = GenerationConfig(max_new_tokens=max_new, batch_size=args.batch_size, seed=args.seed)
    sample_cfg = GenerationConfig(
        **{**vars(config), "temperature": args.temperature, "num_samples": args.k}
    )
    res = _finished_samples(Path(args.out), dataset, info, sample_cfg)
    if res is None:
        res = resample(
            model,
            dataset,
            k=args.k,
            temperature=args.temperature,
            config=config,
            fmt=parse_format(args.prompt, model),
            greedy=greedy,
            extract_with_model=not args.no_model_extract,
            progress=not args.quiet,
        )
        res.save(args.out)  # the slow part is kept even if scoring below fails
    X = available = cell = reference = None
    if probe is not None:
        cell = {"hook": probe.hook, "position": probe.position}
        flat = [r for s in res.sets for r in (s.greedy, *s.samples)]
        if res.meta.get("probe") != cell | {"from_run": str(run_dir)} or any(
            "probe_score" not in r for r in flat
        ):
            # the correctness probe's P(correct) on every sample and greedy answer (`select`)
            scores = score_records(model, probe, flat, progress=not args.quiet)
            for r, v in zip(flat, scores.tolist(), strict=True):
                r["probe_score"] = None if v != v else round(v, 6)
            res.meta["probe"] = cell | {"from_run": str(run_dir)}
        store = ActivationStore.open(run_dir / "activations")
        X, available = store.cell_by_key(probe.hook, probe.position, [s.key for s in res.sets])
        reference = [s.greedy.get("probe_score") for s in res.sets]
    out = res.save(args.out)
    types = error_type_report(
        res.sets, X, available, cell, n_boot=args.n_boot, reference_scores=reference
    )
    types.save(out)
    s = res.summary()
    print(
        f"\n{len(res)} questions x K={res.k}: greedy accuracy {s['greedy_accuracy']}, "
        f"sample accuracy {s['sample_accuracy']}, pass@K {s['pass_at_k'][str(res.k)]}"
    )
    print(
        f"greedy wrong: {s['n_greedy_wrong']}, right answer among the samples for "
        f"{s['pass_at_k_greedy_wrong']} of them"
    )
    print(types.to_markdown())
    print(f"wrote {out / 'samples.jsonl'}, resample_summary.json, error_types.json/md/png")
    return 0


def _finished_samples(out: Path, dataset, info, sample_cfg):
    """The samples already in `out` if they were made for these questions and settings."""
    from tl_truth.answers.generation import same_generation_settings
    from tl_truth.studies.resampling import SAMPLES_FILE, Resampling

    if not (out / SAMPLES_FILE).exists():
        return None
    old = Resampling.load(out)
    same = (
        [s.key for s in old.sets] == [(q.task, q.id) for q in dataset.questions]
        and (old.meta.get("model") or {}).get("fingerprint") == info.fingerprint
        and same_generation_settings(old.meta.get("generation"), sample_cfg)
    )
    if not same:
        raise ValueError(
            f"{out} holds samples for other questions, model or settings; "
            "use another --out or delete it"
        )
    print(f"reusing the samples in {out / SAMPLES_FILE}")
    return old


def cmd_select(args: argparse.Namespace) -> int:
    from tl_truth.studies.resampling import Resampling
    from tl_truth.studies.selection import select_answers

    src = Path(args.samples or args.out)
    res = Resampling.load(src)
    scores = None
    if any("probe_score" in r for s in res.sets for r in s.samples):
        scores = {
            s.key: [
                float("nan") if r.get("probe_score") is None else r["probe_score"]
                for r in s.samples
            ]
            for s in res.sets
        }
    else:
        print("no probe scores in the samples (resample with --from-run): no probe row")
    result = select_answers(
        res.sets, scores, n_boot=args.n_boot, split=None if args.split == "all" else args.split
    )
    result.meta = {"samples": str(src), "split": args.split, "probe": res.meta.get("probe")}
    out = result.save(args.out)
    print(result.to_markdown())
    print(f"Report: {out / 'selection.md'} (also selection.json, selection.png)")
    return 0


def cmd_generalize(args: argparse.Namespace) -> int:
    from tl_truth.answers.run import AnswerRun
    from tl_truth.probing.activations import ActivationStore
    from tl_truth.studies.generalization import generalization_matrix

    run_dir = Path(args.from_run) if args.from_run else Path(args.out)
    if not args.from_run:
        # generate + capture every named position (+ the pooled probe report) into --out first
        cmd_run(argparse.Namespace(**{**vars(args), "positions": None}))
    store = ActivationStore.open(run_dir / "activations")
    records = AnswerRun.load(run_dir).records
    positions = None if args.positions == "all" else tuple(args.positions.split(","))
    result = generalization_matrix(
        store, records, positions=positions, n_boot=args.n_boot, progress=not args.quiet
    )
    result.meta["from_run"] = str(run_dir)
    out = result.save(args.out)
    print(result.to_markdown())
    print(f"Report: {out / 'generalization.md'} (also generalization.json, generalization.png)")
    return 0


def cmd_patch(args: argparse.Namespace) -> int:
    from tl_truth.models import model_info
    from tl_truth.probing.probe import Probe
    from tl_truth.studies.patch_study import patching_study
    from tl_truth.studies.resampling import Resampling

    res = Resampling.load(args.samples)
    model = _load_model(args)
    info = model_info(model)
    if bool(args.probe) == bool(args.from_run):
        raise ValueError("give exactly one of --probe PATH or --from-run DIR")
    probe = (
        Probe.load(args.probe, expect_model=info)
        if args.probe
        else _run_probe(Path(args.from_run), info)
    )
    layers = parse_layers(args.layers, info.n_layers)
    sets = (
        res.sets
        if args.split == "all"
        else [s for s in res.sets if s.greedy["split"] == args.split]
    )
    done = Path(args.out) / "patching.json"
    if done.exists():
        from tl_truth.studies.patch_study import load_study

        study = load_study(args.out)
        same = (
            study.meta.get("samples") == args.samples
            and study.meta.get("split") == args.split
            and study.average().layers == layers
            and study.average().hook_kind == args.hook
            and study.probe.get("hook") == probe.hook
            and study.probe.get("position") == probe.position
            and (study.meta.get("model") or {}).get("fingerprint") == info.fingerprint
            and (args.max_questions is None or len(study.results) <= args.max_questions)
        )
        if not same:
            raise ValueError(f"{done} was made with other settings; use another --out")
        print(f"reusing the patched questions in {done}")
        study.save(args.out)
        print(study.to_markdown())
        return 0
    study = patching_study(
        model,
        sets,
        probe,
        layers,
        hook_kind=args.hook,
        max_questions=args.max_questions,
        progress=not args.quiet,
    )
    study.meta |= {"samples": args.samples, "split": args.split, "model": info.to_dict()}
    out = study.save(args.out)
    print(study.to_markdown())
    print(
        f"Report: {out / 'patching.md'} (also patching.json, patching_average.png, "
        "patching_examples/)"
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tl-truth", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    g = sub.add_parser("generate", help="answer, grade and locate exact answers")
    _common(g)
    g.set_defaults(func=cmd_generate)
    r = sub.add_parser("run", help="generate + capture + probe grid + baselines -> report")
    _common(r)
    r.add_argument(
        "--hooks",
        default="resid_post",
        help="hook kinds, comma-separated: resid_pre,resid_mid,resid_post,attn_out,mlp_out",
    )
    r.add_argument("--layers", default="all", help="all, every:K, or comma-separated indices")
    r.add_argument("--positions", default=None, help="comma-separated named positions")
    r.add_argument("--n-boot", type=int, default=1000, help="bootstrap replicates for CIs")
    r.add_argument("--no-p-true", action="store_true", help="skip the p(True) baseline")
    r.set_defaults(func=cmd_run)
    st = sub.add_parser(
        "steer",
        help="add probe directions to the residual stream, judged on "
        "correctness against random directions",
    )
    _common(st)
    st.add_argument("--probe", default=None, help="a saved probe (path without extension)")
    st.add_argument("--from-run", default=None, help="a `tl-truth run` output directory")
    st.add_argument(
        "--layers",
        default=None,
        help="with --from-run: layers to steer (default: the report's best layer)",
    )
    st.add_argument("--alphas", default="2,4,8", help="strengths, comma-separated")
    st.add_argument(
        "--units",
        choices=["sd", "abs"],
        default="sd",
        help="alpha in SDs of the projection onto the direction, or absolute",
    )
    st.add_argument("--scope", default="all", choices=["all", "prompt", "last_prompt", "generated"])
    st.add_argument("--n-random", type=int, default=5, help="random directions per setting")
    st.set_defaults(func=cmd_steer, max_new_tokens=24)

    rs = sub.add_parser(
        "resample", help="K sampled answers per question, clustered; pass@K and error types"
    )
    _common(rs)
    rs.add_argument("--k", type=int, default=10, help="samples per question (paper: 30)")
    rs.add_argument("--temperature", type=float, default=1.0)
    rs.add_argument("--seed", type=int, default=0)
    rs.add_argument(
        "--from-run",
        default=None,
        help="a `tl-truth run` directory: reuse its greedy answers, score every sample with "
        "its best probe, and fit a probe per error type on its activations",
    )
    rs.add_argument("--n-boot", type=int, default=1000)
    rs.set_defaults(func=cmd_resample, max_new_tokens=24)

    se = sub.add_parser(
        "select", help="greedy vs random vs majority vote vs probe-chosen sample (with CIs)"
    )
    se.add_argument(
        "--samples", default=None, help="a `tl-truth resample` directory (default: --out)"
    )
    se.add_argument("--out", default="runs/latest")
    se.add_argument(
        "--split",
        default="test",
        choices=["test", "train", "all"],
        help="questions to evaluate (the probe trained on the run's train split)",
    )
    se.add_argument("--n-boot", type=int, default=1000)
    se.set_defaults(func=cmd_select)

    ge = sub.add_parser(
        "generalize", help="train the probe on task A, test on task B: the AUC matrix"
    )
    _common(ge)
    ge.add_argument(
        "--from-run",
        default=None,
        help="a `tl-truth run` directory with several tasks (else runs one)",
    )
    ge.add_argument("--hooks", default="resid_post")
    ge.add_argument("--layers", default="every:2")
    ge.add_argument(
        "--positions",
        default="before_exact,exact_first,exact_last,after_exact",
        help="candidate positions for each task's best cell (`all`: every captured one)",
    )
    ge.add_argument("--n-boot", type=int, default=1000)
    ge.set_defaults(
        func=cmd_generalize,
        dataset="capitals,city_country,currencies,elements,fanoutqa,arithmetic",
        limit=200,
        max_new_tokens=24,
        no_p_true=True,
    )

    pa = sub.add_parser(
        "patch",
        help="patch the right sample into the wrong greedy answer, read probe and answer logit",
    )
    _common(pa)
    pa.add_argument("--samples", required=True, help="a `tl-truth resample` directory")
    pa.add_argument("--probe", default=None, help="a saved probe (path without extension)")
    pa.add_argument("--from-run", default=None, help="use this run's best probe")
    pa.add_argument("--layers", default="all", help="all, every:K, or comma-separated")
    pa.add_argument(
        "--hook",
        default="resid_pre",
        choices=["resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_out"],
    )
    pa.add_argument("--split", default="test", choices=["test", "train", "all"])
    pa.add_argument("--max-questions", type=int, default=None)
    pa.set_defaults(func=cmd_patch)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError, ImportError) as e:
        print(f"tl-truth: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
