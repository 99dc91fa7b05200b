#!/usr/bin/env bash
# Everything that needs the GPU, in one pass, for the device machine (H200: torch 2.11, Python 3.12,
# no network). Carries its Python dependencies as wheels in the git-ignored .whl/ folder:
#   .whl/site/  compressai 1.2.8 and pytorch-msssim unpacked for Python 3.12
#   .whl/nox/   nox and its dependencies (for `nox -s gpu`)
#   .whl/numba312.tar.xz  numba and llvmlite unpacked for Python 3.12, tar.xz (the rANS coder
#               hpcm_models.ans; 42 MB instead of the wheels' 64, which would not fit a carry)
# Usage (device tool, carry [".whl"]): bash tools/gpu_validate.sh [OUTDIR]
# Each step has its own time limit so that a slow step cannot starve the later ones; logs and JSON
# go to OUTDIR (default $OUT, else gpu-results/). STEPS picks steps (default: all but
# codec_tests), e.g. STEPS="codec_tests bench_codec" for the codec alone (no nox, no kernel build).
set -uo pipefail
out=${1:-${OUT:-gpu-results}}
mkdir -p "$out"
export PYTHONUNBUFFERED=1 CUBLAS_WORKSPACE_CONFIG=:4096:8
steps=" ${STEPS:-build gpu_tests bench_kernel bench_codec bench_models} "
if [ -d .whl/nox ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/nox-site .whl/nox/*.whl
fi
if [ -f .whl/numba312.tar.xz ]; then
    mkdir -p /tmp/numba-site && tar -xJf .whl/numba312.tar.xz -C /tmp/numba-site
fi
export PYTHONPATH="/tmp/numba-site:/tmp/nox-site:$PWD/.whl/site:$PWD/packages/biwkv4-kernel/src:$PWD/packages/rwkv-blocks/src:$PWD/packages/hpcm-models/src"

step() {  # step NAME SECONDS COMMAND...
    local name=$1 limit=$2; shift 2
    [[ "$steps" == *" $name "* ]] || return 0
    local start=$SECONDS
    timeout "$limit" "$@" >"$out/$name.log" 2>&1
    local rc=$?
    echo "== $name: exit $rc in $((SECONDS - start)) s" | tee -a "$out/summary.txt"
    tail -n 25 "$out/$name.log"
}

nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem --format=csv >"$out/gpu.txt" 2>&1
step build 120 python3 -c "import biwkv4_kernel as b, time; t=time.time(); print(b.cuda_kernel_available(), b.cuda_kernel_status(), f'{time.time()-t:.1f} s')"
step gpu_tests "${GPU_TESTS_LIMIT:-300}" python3 -m nox -s gpu -- -q -rfE --durations=15 -p no:cacheprovider --junitxml="$out/gpu-junit.xml" -o junit_family=xunit1
step bench_kernel "${KERNEL_BENCH_LIMIT:-240}" python3 benchmarks/bench_biwkv4.py --json "$out/bench_biwkv4.json"
# The codec on this machine (CPU and cuda-marked tests): the rANS coder's kernels compile here
# (numba), the golden files, old and new coder byte for byte, the hash thread, graphs.
step codec_tests "${CODEC_TESTS_LIMIT:-240}" python3 -m pytest -q -rfE -p no:cacheprovider \
    tests/models/test_ans.py tests/models/test_golden.py tests/models/test_codec_coding.py \
    tests/models/test_codec.py
step bench_codec "${CODEC_LIMIT:-300}" python3 benchmarks/bench_codec.py --device cuda --json "$out/bench_codec.json"
step bench_models "${BENCH_LIMIT:-300}" python3 -m hpcm_models.cli bench --device cuda --repeat 5 --warmup 2 --json "$out/bench_models.json"
cat "$out/summary.txt"
