#!/usr/bin/env bash
# Reduced-size versions of the README's runs; outputs compared before/after the restructure.
set -euo pipefail
PY=${PY:-/work/main/.venv/bin/python}
R=$1
T="$PY -m tl_truth.cli"
$T run --dataset capitals,city_country --limit 40 --layers every:10 --max-new-tokens 16 --no-model-extract --n-boot 200 --locate paper --n-perm 0 --out $R/run --quiet
$T steer --from-run $R/run --dataset capitals --limit 6 --layers 10 --alphas 4 --n-random 2 --max-new-tokens 12 --out $R/steer --quiet
$T resample --from-run $R/run --dataset capitals,city_country --limit 40 --k 3 --no-model-extract --n-boot 200 --out $R/knows --quiet
$T select --out $R/knows --n-boot 200
$T generalize --from-run $R/run --out $R/gen --n-boot 200 --quiet --positions all
