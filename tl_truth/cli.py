"""`tl-truth` command line: `tl-truth generate ...` (more subcommands as the pipeline grows)."""

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


def cmd_generate(args: argparse.Namespace) -> int:
    import torch

    from tl_truth.answers import answer_questions
    from tl_truth.data import load_questions
    from tl_truth.generation import GenerationConfig
    from tl_truth.models import load_model
    from tl_truth.prompts import parse_format

    if args.threads:
        torch.set_num_threads(args.threads)
    dataset = load_questions(args.dataset, args.limit)
    t0 = time.perf_counter()
    model = load_model(
        args.model, backend=args.backend, device=args.device, compatibility_mode=args.compat
    )
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
    import torch

    from tl_truth.data import load_questions
    from tl_truth.generation import GenerationConfig
    from tl_truth.models import hook_name, load_model
    from tl_truth.positions import NAMED_POSITIONS
    from tl_truth.prompts import parse_format
    from tl_truth.report import run_all

    if args.threads:
        torch.set_num_threads(args.threads)
    dataset = load_questions(args.dataset, args.limit)
    model = load_model(
        args.model, backend=args.backend, device=args.device, compatibility_mode=args.compat
    )
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
    import torch

    from tl_truth.activations import ActivationStore
    from tl_truth.data import load_questions
    from tl_truth.directions import from_probe
    from tl_truth.generation import GenerationConfig
    from tl_truth.models import load_model, model_info
    from tl_truth.probes import Probe
    from tl_truth.steer_eval import steering_sweep

    if args.threads:
        torch.set_num_threads(args.threads)
    if bool(args.probe) == bool(args.from_run):
        raise ValueError("give exactly one of --probe PATH or --from-run DIR")
    model = load_model(
        args.model, backend=args.backend, device=args.device, compatibility_mode=args.compat
    )
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
