#!/usr/bin/env bash
# The prepared accelerator check (issue 18 part 2; docs/performance.md §9): on a GPU or TPU machine, install the
# accelerator build of jax into the project's environment, run the accelerator checks (the step on the device equals
# the CPU step, the bfloat16 steps, device augmentation, the demo), then the benchmark table, in <= 8 minutes.
#
#   benchmarks/accelerator_check.sh                     # detects the accelerator, installs, checks, benchmarks
#   ACCELERATOR=tpu benchmarks/accelerator_check.sh     # force the extra: gpu | tpu | none (jax already installed)
#   benchmarks/accelerator_check.sh --dry_run           # CPU backend, tiny shapes, no install (CI: seconds)
#   OUT_DIR=results/h100 benchmarks/accelerator_check.sh --steps=20   # other flags go to the Python driver
#
# Outputs in $OUT_DIR (default accelerator_check/): accelerator_checks.json, accelerator_bench.json,
# accelerator_bench.md. Exit status: non-zero when the install or a check fails.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
START_S=$(date +%s)
TOTAL_S=${TOTAL_S:-480}  # the whole script, install included; the benchmark stops starting rows before it
OUT_DIR=${OUT_DIR:-accelerator_check}

if [[ -n "${PYTHON:-}" ]]; then
  :
elif [[ -x "$ROOT/.venv/bin/python" ]]; then
  PYTHON="$ROOT/.venv/bin/python"
else
  PYTHON=python3
fi

DRY_RUN=0
for arg in "$@"; do
  [[ "$arg" == "--dry_run" || "$arg" == "--dry_run=true" ]] && DRY_RUN=1
done

detect_accelerator() {
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    echo gpu
  elif compgen -G "/dev/accel*" >/dev/null || compgen -G "/dev/vfio/[0-9]*" >/dev/null || [[ -n "${TPU_NAME:-}" ]]; then
    echo tpu
  else
    echo none
  fi
}

if [[ "$DRY_RUN" == 1 ]]; then
  echo "accelerator_check: dry run (CPU backend, tiny shapes, no install)"
else
  ACCELERATOR=${ACCELERATOR:-$(detect_accelerator)}
  case "$ACCELERATOR" in
    gpu | tpu)
      # Keep the jax version the CPU numbers were measured with, when one is installed (the extra allows < 0.13).
      JAX_PIN=$("$PYTHON" -c "import jax; print('jax==' + jax.__version__)" 2>/dev/null || true)
      echo "accelerator_check: installing the project with the [$ACCELERATOR] extra (pyproject.toml) ${JAX_PIN:+($JAX_PIN)}"
      "$PYTHON" -m pip install --quiet -e ".[$ACCELERATOR]" ${JAX_PIN:+"$JAX_PIN"}
      ;;
    none)
      echo "accelerator_check: no GPU/TPU detected and ACCELERATOR unset: using the installed jax as it is"
      ;;
    *)
      echo "error: ACCELERATOR=$ACCELERATOR is not one of gpu, tpu, none" >&2
      exit 1
      ;;
  esac
  "$PYTHON" -c "import jax; print('accelerator_check: jax', jax.__version__, jax.default_backend(), jax.devices())"
fi

DEADLINE_UNIX=$((START_S + TOTAL_S))
exec "$PYTHON" -m benchmarks.accelerator_check --out_dir="$OUT_DIR" --deadline_unix="$DEADLINE_UNIX" "$@"
