#!/usr/bin/env bash
# One prepared GPU check, for a machine with CUDA and a CUDA build of torch in .venv:
# the device-sensitive tests on CUDA, then `make bench-gpu`. Logs go to $1 (default
# bench/results/); extra arguments after it go to bench/gpu.py.
#   scripts/gpu_check.sh [out-dir] [bench/gpu.py options]
set -uo pipefail
out=${1:-bench/results}
shift || true
mkdir -p "$out"
export PYTHONPATH="$PWD:$PWD/gen/python" MILLM_TEST_DEVICE=cuda
if ! .venv/bin/python -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 2)"; then
  echo "no CUDA device (or a CPU-only torch in .venv): nothing to check" >&2
  exit 2
fi
.venv/bin/python -m pytest -q -p no:cacheprovider \
  tests/unit/engine/test_defaults.py tests/unit/engine/test_row_edits.py \
  tests/unit/monitoring/test_device_frames.py tests/unit/training/test_trainer_device.py \
  tests/unit/training/test_trainer.py tests/unit/steering/test_model_steering.py \
  tests/unit/engine/test_batching.py 2>&1 | tee "$out/gpu-tests.log"
tests=${PIPESTATUS[0]}
.venv/bin/python bench/gpu.py "$@" 2>&1 | tee "$out/gpu-bench.log"
bench=${PIPESTATUS[0]}
echo "tests exit $tests, bench exit $bench"
exit $((tests || bench))
