"""`tl-truth resample | select | patch | generalize` end to end on the real SmolLM2 (small slice)."""

import json

import pytest

from tl_truth.cli import main

# One xdist worker runs the whole module, so its module-scoped SmolLM2 run is made once.
pytestmark = [pytest.mark.integration, pytest.mark.xdist_group("knows_more")]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("knows") / "run"
    args = "run --dataset capitals,elements --limit 24 --layers 4,16 --max-new-tokens 24 "
    args += "--positions exact_first,exact_last,last_generated "
    args += f"--no-model-extract --no-p-true --n-boot 100 --quiet --out {out}"
    assert main(args.split()) == 0
    return out


def test_resample_select_patch_chain(run_dir, tmp_path, capsys):
    out = tmp_path / "knows"
    args = f"resample --dataset capitals,elements --limit 24 --k 4 --from-run {run_dir} "
    args += f"--no-model-extract --n-boot 100 --quiet --out {out}"
    assert main(args.split()) == 0
    lines = [json.loads(x) for x in (out / "samples.jsonl").read_text().splitlines()]
    assert len(lines) == 48 * 4
    assert {x["sample_index"] for x in lines} == {0, 1, 2, 3}
    assert all("cluster" in x and "probe_score" in x for x in lines)
    summary = json.loads((out / "resample_summary.json").read_text())
    assert summary["k"] == 4 and summary["meta"]["greedy_reused"] == 48
    # greedy answers are reused from the run, sampled answers are not all identical to them
    assert 0 <= summary["pass_at_k_greedy_wrong"] <= 1
    types = json.loads((out / "error_types.json").read_text())
    assert types["thresholds"]["k"] == 4
    assert types["distribution"]["all"]["n"] == 48
    assert set(types["probes"]) == set(types["definitions"])

    assert main(["select", "--out", str(out), "--n-boot", "100"]) == 0
    sel = json.loads((out / "selection.json").read_text())
    for name in ("greedy", "random", "majority", "probe"):
        v = sel["accuracy"][name]
        assert 0 <= v["value"] <= 1 and v["ci"][0] <= v["value"] <= v["ci"][1]
    assert {"per_type", "pass_at_k"} <= set(sel)
    assert "Answer selection" in capsys.readouterr().out
    # `select --dataset` resamples first: here it finds the finished samples and scores
    args = f"select --dataset capitals,elements --limit 24 --k 4 --from-run {run_dir} "
    args += f"--no-model-extract --n-boot 100 --quiet --out {out}"
    assert main(args.split()) == 0
    printed = capsys.readouterr().out
    assert f"reusing the samples in {out / 'samples.jsonl'}" in printed
    assert "Answer selection" in printed
    assert json.loads((out / "selection.json").read_text()) == sel

    pa = tmp_path / "patch"
    args = f"patch --samples {out} --from-run {run_dir} --layers 0,16 --split all "
    args += f"--max-questions 2 --quiet --out {pa}"
    rc = main(args.split())
    if summary["pass_at_k_greedy_wrong"] == 0:  # no pair in this slice: a clear error
        assert rc == 2
        return
    assert rc == 0
    doc = json.loads((pa / "patching.json").read_text())
    assert 1 <= doc["summary"]["n_questions"] <= 2
    assert (pa / "patching_average.png").exists()


def test_generalize_from_run(run_dir, tmp_path):
    out = tmp_path / "gen"
    assert (
        main(
            [
                "generalize",
                "--from-run",
                str(run_dir),
                "--n-boot",
                "100",
                "--quiet",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    g = json.loads((out / "generalization.json").read_text())
    assert g["tasks"] == ["capitals", "elements"]
    assert len(g["auc"]) == 2 and len(g["auc_minus_logit"][0]) == 2
    for i in range(2):
        for j in range(2):
            a, m, b = g["auc"][i][j], g["auc_minus_logit"][i][j], g["logit_auc"][i][j]
            assert a is None or (0 <= a <= 1 and m == pytest.approx(a - b, abs=1e-3))
    assert (out / "generalization.png").exists()


def test_generalize_runs_the_job_when_no_run_is_given(tmp_path):
    out = tmp_path / "gen"
    args = "generalize --dataset capitals,elements --limit 12 --layers 8 --max-new-tokens 24 "
    args += f"--no-model-extract --n-boot 50 --quiet --out {out}"
    assert main(args.split()) == 0
    assert (out / "report.json").exists() and (out / "activations" / "meta.json").exists()
    g = json.loads((out / "generalization.json").read_text())
    assert g["tasks"] == ["capitals", "elements"] and g["meta"]["from_run"] == str(out)
