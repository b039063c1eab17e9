#!/usr/bin/env bash
# One prepared GPU check: the cuda-marked tests, a few suites on CUDA and the GPU benchmark, in
# about 8 minutes, everything logged under $OUT (or ./gpu_check_out without the device tool).
#
# The GPU machine has torch but not gymnasium, ale-py or stable-baselines3: their wheels travel
# in the git-ignored folder .whl (Python 3.12, manylinux x86_64), prepared on a machine with
# internet access from the repository root:
#
#   echo /.whl/ >> .git/info/exclude
#   python -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
#       --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
#       --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl \
#       gymnasium==1.4.0 ale-py==0.12.1 stable_baselines3==2.9.2 farama-notifications==0.0.6
#
# Then, through the device tool: run(command="bash benchmarks/gpu_check.sh", carry=[".whl"],
# timeout_s=590). On any other GPU machine with those packages installed: bash
# benchmarks/gpu_check.sh (the .whl step is skipped when the folder is absent).
#
# Knobs (environment variables): PYTHON (default python3), WHEELS (default .whl; empty: use the
# installed packages), BENCH_ARGS (bench_gpu.py's arguments), SUITES (step 3's test files; empty:
# skip). A plumbing check on a CPU machine:
#   WHEELS= PYTHON=.venv/bin/python SUITES= OUT=/tmp/gpu_check \
#   BENCH_ARGS="--device cpu --num-envs 8 --steps 512 --sb3-steps 512" bash benchmarks/gpu_check.sh
#
# Steps (each under its own time limit, so one hang cannot eat the others' time):
#   1. pytest -m cuda tests/test_device.py            (CUDA: tiny runs + resume, Fisher, freeze,
#                                                      SB3 plug-in, checkpoints across devices)
#   2. python benchmarks/bench_gpu.py --paper          (steps/s vs num_envs, profile, SB3)
#   3. pytest tests/test_methods.py tests/test_ppo.py tests/test_train.py (they pick CUDA when
#      it is present, as a user's machine would)
set -u
OUT="${OUT:-$PWD/gpu_check_out}"
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
PY="${PYTHON:-python3}"
WHEELS="${WHEELS-.whl}"
BENCH_ARGS="${BENCH_ARGS:---paper --steps 32768 --sb3-steps 8192}"
SUITES="${SUITES-tests/test_methods.py tests/test_ppo.py tests/test_train.py}"
if [ -n "$WHEELS" ] && [ -d "$WHEELS" ]; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site "$WHEELS"/*.whl || { echo "wheel install failed"; exit 3; }
    export PYTHONPATH="/tmp/site:$PWD"
else
    export PYTHONPATH="$PWD"
fi
start=$(date +%s)
stamp() { echo "=== $1 at +$(( $(date +%s) - start )) s"; }

{
    stamp "machine"
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 || true
    nproc
    "$PY" - <<'EOF'
import ale_py, gymnasium, stable_baselines3, torch
print("torch", torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available())
if torch.cuda.is_available():
    print("gpu", torch.cuda.get_device_name(0))
print("ale-py", ale_py.__version__, "gymnasium", gymnasium.__version__, "sb3", stable_baselines3.__version__)
EOF
} 2>&1 | tee "$OUT/gpu_check.log"

stamp "1. cuda tests" | tee -a "$OUT/gpu_check.log"
timeout 170 "$PY" -m pytest -q -m cuda -n 4 -p no:cacheprovider -rs --durations=10 \
    tests/test_device.py 2>&1 | tee "$OUT/cuda_tests.txt"
echo "cuda tests exit: ${PIPESTATUS[0]}" | tee -a "$OUT/gpu_check.log"

stamp "2. bench_gpu" | tee -a "$OUT/gpu_check.log"
# shellcheck disable=SC2086  # BENCH_ARGS is a list of arguments
timeout 250 "$PY" benchmarks/bench_gpu.py $BENCH_ARGS --json "$OUT/bench_gpu.json" 2>&1 \
    | tee "$OUT/bench_gpu.txt"
echo "bench exit: ${PIPESTATUS[0]}" | tee -a "$OUT/gpu_check.log"

if [ -n "$SUITES" ]; then
    stamp "3. suites on CUDA" | tee -a "$OUT/gpu_check.log"
    # shellcheck disable=SC2086  # SUITES is a list of files
    timeout 110 "$PY" -m pytest -q -n 8 -p no:cacheprovider $SUITES 2>&1 | tee "$OUT/suites.txt"
    echo "suites exit: ${PIPESTATUS[0]}" | tee -a "$OUT/gpu_check.log"
fi
stamp "done" | tee -a "$OUT/gpu_check.log"
