"""The jobs behind the `tl-truth` subcommands: one function each, as usable from a notebook.

Every job takes `RunOptions` and its own configs (`tl_truth.config`; a config left None is the
subcommand's default, `defaults(command)`), loads the model when it first needs one (or uses
`model=`), makes what it needs first, writes its outputs to `options.out` and returns its result:

===================  =========================================================================
`generate_job`       answers, graded, exact answers located              -> `AnswerRun`
`run_job`            the main job: + activations, probe grid, baselines  -> `ProbeReport`
`steer_job`          probe directions vs random ones                      -> `SteeringResult`
`resample_job`       K samples per question, probe scores, error types    -> `ResampleResult`
`select_job`         greedy vs random vs majority vs probe-chosen sample  -> `SelectionResult`
`generalize_job`     train on task A, test on task B                      -> `GeneralizationResult`
`patch_job`          patch right samples into wrong greedy answers        -> `PatchStudy`
`correct_job`        the probe's choice among forced candidate answers    -> `CorrectionResult`
===================  =========================================================================

Prerequisites. A job that needs a run (a probe and its activations) and is given none
(`from_run=None`) gets one from `ensure_run`, which reuses a finished run with the same
questions, model, generation settings, hooks and positions and otherwise runs `run_job` (which
itself resumes finished generations and activation shards): `steer` into `<out>/run` (on
`SteeringConfig.train_limit` questions, capturing only the layers it steers when they are
given), `resample` into `<out>/run`, `generalize` into `<out>`. `select` given a dataset and no
samples resamples into `<out>` first, `patch` given no samples into `<out>/samples`.
`correct` needs a finished run (`--from-run`) and makes none. Finished samples and patched
questions in the output directory are reused too, and so are `correct`'s finished batches.

Progress notes ("reusing ...") go to the `tl_truth.studies.jobs` logger at INFO level.

The jobs live by family, and are all importable from here: `run_jobs` (generate, run,
`ensure_run` / `finished_run`, generalize), `sample_jobs` (resample, select,
`finished_samples`), `intervention_jobs` (steer, patch), `correction_job` (correct);
`job_setup` holds what they share (the lazily loaded model, the subcommand defaults,
`run_probe`).
"""

from tl_truth.studies.correction_job import correct_job
from tl_truth.studies.intervention_jobs import patch_job, steer_job
from tl_truth.studies.job_setup import (
    RUN_DIR,
    SAMPLES_DIR,
    load_model_for,
    log,
    run_probe,
)
from tl_truth.studies.run_jobs import (
    ensure_run,
    finished_run,
    generalize_job,
    generate_job,
    run_job,
)
from tl_truth.studies.sample_jobs import (
    ResampleResult,
    finished_samples,
    resample_job,
    select_job,
)

__all__ = [
    "RUN_DIR",
    "SAMPLES_DIR",
    "ResampleResult",
    "correct_job",
    "ensure_run",
    "finished_run",
    "finished_samples",
    "generalize_job",
    "generate_job",
    "load_model_for",
    "log",
    "patch_job",
    "resample_job",
    "run_job",
    "run_probe",
    "select_job",
    "steer_job",
]
