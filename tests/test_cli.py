"""The CLI parses into `tl_truth.config` and dispatches to `tl_truth.studies.jobs` (no model).

The flags' defaults are the config dataclasses' defaults; the flags and defaults the CLI had
before the configs existed are pinned here; prerequisites (a run, samples) are made by the job
when the command is given none. Heavy jobs are replaced by recorders, so this takes seconds.
"""

from __future__ import annotations

import argparse
from dataclasses import fields
from pathlib import Path
from types import SimpleNamespace

import pytest

from tl_truth import cli
from tl_truth.config import (
    ALL_TASKS,
    COMMANDS,
    SWEEP_ALPHAS,
    ProbeConfig,
    RunOptions,
    SteeringConfig,
    defaults,
    parse_layers,
)
from tl_truth.studies import intervention_jobs, job_setup, jobs, run_jobs, sample_jobs

JOB_MODULES = (jobs, job_setup, run_jobs, sample_jobs, intervention_jobs)


def patch_jobs(monkeypatch, name: str, value) -> None:
    """Replace `name` in the job modules (`tl_truth.studies.jobs` re-exports them, and each
    job looks its collaborators up in its own module)."""
    modules = [m for m in JOB_MODULES if hasattr(m, name)]
    assert modules, name
    for m in modules:
        monkeypatch.setattr(m, name, value)


# Every flag and default of `tl-truth` before the configs existed (parity).
_COMMON = {
    "model": "smollm2-135m-instruct",
    "backend": "bridge",
    "compat": False,
    "dataset": "capitals",
    "limit": None,
    "out": "runs/latest",
    "prompt": "auto",
    "max_new_tokens": 48,
    "batch_size": 32,
    "model_extract": True,
    "device": None,
    "threads": None,
    "quiet": False,
}
OLD_DEFAULTS = {
    "generate": {"options": _COMMON},
    "run": {
        "options": _COMMON,
        "probing": {
            "hooks": ("resid_post",),
            "layers": "all",
            "positions": None,
            "n_boot": 1000,
            "p_true": True,
        },
    },
    "steer": {
        "options": {**_COMMON, "max_new_tokens": 24},
        "steering": {
            "layers": None,
            # None since --directions: the sweep still uses 2, 4, 8 (SWEEP_ALPHAS, pinned in
            # test_sweep_alphas_default_is_unchanged); each family has its own default grid
            "alphas": None,
            "units": "sd",
            "scope": "all",
            "n_random": 5,
        },
    },
    "resample": {
        "options": {**_COMMON, "max_new_tokens": 24},
        "resampling": {"k": 10, "temperature": 1.0, "seed": 0},
        "probing": {"n_boot": 1000},
    },
    "select": {
        "options": {"out": "runs/latest"},
        "selection": {"split": "test"},
        "probing": {"n_boot": 1000},
    },
    "generalize": {
        "options": {**_COMMON, "dataset": ALL_TASKS, "limit": 200, "max_new_tokens": 24},
        "probing": {"hooks": ("resid_post",), "layers": "every:2", "n_boot": 1000, "p_true": False},
        "generalization": {
            "positions": ("before_exact", "exact_first", "exact_last", "after_exact")
        },
    },
    "patch": {
        "options": _COMMON,
        "patching": {"layers": "all", "hook_kind": "resid_pre", "split": "test"},
    },
    "correct": {
        "options": {**_COMMON, "dataset": None, "max_new_tokens": 24},
        "correction": {"k": 5, "slot": "exact", "split": "test", "position": None},
    },
}
OLD_FLAGS = {
    "generate": "--no-model-extract --compat --quiet --threads 2 --device cpu --backend hooked",
    "run": "--hooks resid_post,mlp_out --layers every:6 --positions exact_first --n-boot 10 "
    "--no-p-true",
    "steer": "--probe p --layers 8,16 --alphas 4,8,16 --units abs --scope generated --n-random 2",
    "resample": "--k 4 --temperature 0.7 --seed 3 --from-run r --n-boot 100",
    "select": "--samples s --out o --split all --n-boot 100",
    "generalize": "--from-run r --hooks resid_post --layers 4 --positions all --n-boot 100",
    "patch": "--samples s --from-run r --layers 0,16 --hook resid_post --split all "
    "--max-questions 2",
    "correct": "--from-run r --samples s --k 3 --slot start --split all --position exact_last "
    "--n-boot 100",
}


def subparsers() -> dict[str, argparse.ArgumentParser]:
    parser = cli.build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def parse(argv: list[str]) -> dict:
    return cli.configs_from_args(cli.build_parser().parse_args(argv))


@pytest.mark.parametrize("command", COMMANDS)
def test_flag_defaults_are_the_config_defaults(command):
    assert parse([command]) == defaults(command)


@pytest.mark.parametrize("command", COMMANDS)
def test_every_flag_lands_in_a_config_field_or_a_job_input(command):
    wanted = defaults(command)
    for action in subparsers()[command]._actions:
        if action.dest in ("help", "func"):
            continue
        if "." not in action.dest:  # paths the job takes as arguments, and the launcher's
            assert action.dest in ("probe", "from_run", "samples", "nproc"), action.dest
            continue
        config, name = action.dest.split(".", 1)
        assert name in [f.name for f in fields(wanted[config])], action.dest


@pytest.mark.parametrize("command", COMMANDS)
def test_old_defaults_and_flags_are_kept(command):
    got = parse([command])
    for config, values in OLD_DEFAULTS[command].items():
        for name, value in values.items():
            assert getattr(got[config], name) == value, f"{command} {config}.{name}"
    parse([command, *OLD_FLAGS[command].split()])


def test_no_p_true_on_every_command_that_runs_the_main_job():
    for command in ("run", "steer", "resample", "select", "generalize", "patch"):
        assert parse([command, "--no-p-true"])["probing"].p_true is False
        assert parse([command, "--p-true"])["probing"].p_true is True
    assert defaults("run")["probing"].p_true and not defaults("generalize")["probing"].p_true


def test_flags_parse_into_normalised_configs():
    cfg = parse(["steer", "--alphas", "1,2.5", "--layers", "8,16", "--hook", "resid_mid"])
    assert cfg["steering"] == SteeringConfig(alphas=(1, 2.5), layers="8,16", hook_kind="resid_mid")
    cfg = parse(["run", "--hooks", "resid_pre,mlp_out", "--positions", "exact_first,last_prompt"])
    assert cfg["probing"].hooks == ("resid_pre", "mlp_out")
    assert cfg["probing"].positions == ("exact_first", "last_prompt")
    assert cfg["probing"].hook_names(2) == [
        "blocks.0.hook_resid_pre",
        "blocks.1.hook_resid_pre",
        "blocks.0.hook_mlp_out",
        "blocks.1.hook_mlp_out",
    ]
    assert parse(["generalize", "--positions", "all"])["generalization"].positions is None
    assert parse(["select", "--no-model-extract"])["options"].model_extract is False
    assert parse(["run"])["probing"].capture == "fused"
    assert parse(["run", "--capture", "two_pass"])["probing"].capture == "two_pass"


def test_configs_reject_bad_values():
    with pytest.raises(ValueError, match="hook kinds"):
        ProbeConfig(hooks="resid_post,nope")
    with pytest.raises(ValueError, match="units"):
        SteeringConfig(units="px")
    with pytest.raises(ValueError, match="capture"):
        ProbeConfig(capture="twice")
    assert cli.main(["run", "--hooks", "nope", "--out", "/nonexistent"]) == 2


def test_sweep_alphas_default_is_unchanged():
    assert SWEEP_ALPHAS == (2.0, 4.0, 8.0)
    cfg = parse(
        ["steer", "--directions", "probe,heads", "--ks", "2,8", "--scopes", "all,generated"]
    )
    assert cfg["steering"].directions == ("probe", "heads")
    assert cfg["steering"].head_ks == (2, 8) and cfg["steering"].scopes == ("all", "generated")
    assert cfg["resampling"].k == 10  # the contrastive family's samples
    with pytest.raises(ValueError, match="directions"):
        SteeringConfig(directions="probe,nope")
    with pytest.raises(ValueError, match="unknown family"):
        SteeringConfig(family_alphas="nope=1")


def test_run_options_for_a_command():
    o = RunOptions.for_command("steer", dataset="elements")
    assert (o.dataset, o.max_new_tokens) == ("elements", 24)
    assert RunOptions().generation().max_new_tokens == 48
    assert RunOptions(out=Path("x")).out == "x"


def test_parse_layers_is_still_importable_from_the_cli():
    assert cli.parse_layers is parse_layers
    assert parse_layers((3, 1), 4) == [3, 1]


# -- dispatch: prerequisites are made by the job -----------------------------------------------


class Stop(Exception):
    """Raised by a recorder to end the job there (not an error `main` would swallow)."""


def record(calls: list, name: str, result=None):
    def fake(*args, **kwargs):
        calls.append((name, args, kwargs))
        if result is None:
            raise Stop(name)
        return result

    return fake


def test_select_with_a_dataset_resamples_first(monkeypatch, tmp_path):
    calls: list = []
    patch_jobs(monkeypatch, "resample_job", record(calls, "resample"))
    argv = ["select", "--dataset", "capitals", "--k", "3", "--limit", "8", "--out", str(tmp_path)]
    with pytest.raises(Stop):
        cli.main(argv)
    [(_, (options, resampling, from_run, probing, _model), _)] = calls
    assert (options.dataset, options.limit, options.out) == ("capitals", 8, str(tmp_path))
    assert resampling.k == 3 and from_run is None and probing.p_true is False


def test_select_without_dataset_or_samples_reads_out(monkeypatch, tmp_path):
    patch_jobs(monkeypatch, "resample_job", record([], "resample"))
    assert cli.main(["select", "--out", str(tmp_path)]) == 2  # no samples there: a clear error
    with pytest.raises(FileNotFoundError, match="no samples in"):
        jobs.select_job(RunOptions.for_command("select", out=str(tmp_path)))


def test_steer_without_probe_or_run_makes_its_run(monkeypatch, tmp_path):
    calls: list = []
    patch_jobs(monkeypatch, "ensure_run", record(calls, "ensure_run"))
    argv = ["steer", "--dataset", "capitals", "--limit", "8", "--layers", "10", "--hook"]
    argv += ["resid_mid", "--train-limit", "50", "--out", str(tmp_path)]
    with pytest.raises(Stop):
        cli.main(argv)
    [(_, (options, probing, _model), _)] = calls
    assert options.out == str(tmp_path / "run") and options.limit == 50
    assert options.max_new_tokens == 24 and options.dataset == "capitals"
    assert probing.hooks == ("resid_mid",) and probing.layers == "10"
    assert probing.p_true is False


def test_steer_with_a_run_or_probe_makes_none(monkeypatch, tmp_path):
    calls: list = []
    patch_jobs(monkeypatch, "ensure_run", record(calls, "ensure_run"))
    patch_jobs(monkeypatch, "load_model_for", lambda options: "model")
    patch_jobs(monkeypatch, "model_info", record(calls, "model_info"))
    for flag in ("--from-run", "--probe"):
        with pytest.raises(Stop):
            cli.main(["steer", flag, str(tmp_path), "--out", str(tmp_path)])
    assert [c[0] for c in calls] == ["model_info", "model_info"]
    assert cli.main(["steer", "--probe", "p", "--from-run", "r"]) == 2


def test_resample_and_generalize_make_their_runs(monkeypatch, tmp_path):
    calls: list = []
    patch_jobs(monkeypatch, "ensure_run", record(calls, "ensure_run"))
    patch_jobs(monkeypatch, "load_questions", lambda spec, limit: f"questions {spec} {limit}")
    with pytest.raises(Stop):
        cli.main(["resample", "--dataset", "elements", "--limit", "4", "--out", str(tmp_path)])
    with pytest.raises(Stop):
        cli.main(["generalize", "--limit", "4", "--layers", "3", "--out", str(tmp_path)])
    (_, (o1, p1, _, data), _), (_, (o2, p2, _), _) = calls
    assert o1.out == str(tmp_path / "run") and data == "questions elements 4"
    assert p1 == defaults("resample")["probing"]
    assert o2.out == str(tmp_path) and o2.dataset == ALL_TASKS and p2.layers == "3"


def test_patch_without_samples_resamples_into_out_samples(monkeypatch, tmp_path):
    calls: list = []
    patch_jobs(monkeypatch, "resample_job", record(calls, "resample"))
    with pytest.raises(Stop):
        cli.main(["patch", "--dataset", "capitals", "--k", "5", "--out", str(tmp_path)])
    [(_, (options, resampling, from_run, _probing, _model), _)] = calls
    assert options.out == str(tmp_path / "samples") and resampling.k == 5 and from_run is None


def test_correct_passes_its_run_and_samples_to_the_job(monkeypatch, tmp_path):
    calls: list = []
    patch_jobs(monkeypatch, "correct_job", record(calls, "correct"))
    argv = ["correct", "--from-run", "r", "--samples", "s", "--k", "3", "--limit", "30"]
    with pytest.raises(Stop):
        cli.main([*argv, "--out", str(tmp_path)])
    [(_, _, kw)] = calls
    assert (kw["from_run"], kw["samples"], kw["correction"].k) == ("r", "s", 3)
    assert kw["options"].limit == 30 and kw["options"].dataset is None


def test_missing_datasets_names_the_hub_extra(monkeypatch, capsys):
    def fail(*args, **kwargs):
        raise ModuleNotFoundError("No module named 'datasets'", name="datasets")

    patch_jobs(monkeypatch, "generate_job", fail)
    assert cli.main(["generate"]) == 2
    assert "tl_truth[hub]" in capsys.readouterr().err


def test_printed_markdown_has_the_title_heading():
    class Fake:
        def title(self):
            return "Answer selection"

        def to_markdown(self):
            return "| a |\n"

    assert cli._markdown(Fake()) == "## Answer selection\n\n| a |\n"
    assert cli._markdown(SimpleNamespace(to_markdown=lambda: "x")) == "x"
