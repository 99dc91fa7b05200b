#!/usr/bin/env bash
# Train plans of small codecs on the GPU machine (no network) and bring back their fp16 weights.
# Usage (device tool, carry [".whl", "data"]):
#   bash tools/gpu_train.sh END_S PLAN [ARGS...] [--- PLAN [ARGS...]]...
# Each group (plans separated by ---) is one tools/train_codecs.py process; the groups run side by
# side, sharing the GPU. ARGS go to train_codecs.py (--steps N or --time-budget S, --only NAME...,
# --resume, --stop-at, --save-every); --data, --output, --export and --deadline are set here.
# END_S: seconds after this script starts by which every run is stopped and exported regardless.
# Expects the photo set in data/photos (tools/build_dataset.py) and compressai + pytorch-msssim
# unpacked in .whl/site (tools/gpu_validate.sh says how). Writes to $OUT (else gpu-results/):
# weights-N.tar (the runs' fp16 weights NAME.pt, two a file: the device returns at most 8 files
# of 16 MiB) and logs.tar.gz (gpu.txt, every group's summary, every run's logs and commands). The
# run directories stay in runs/gpu/ on the machine: a later call on the same (warm) machine can
# --resume them, so KEEP=1 leaves runs/gpu in place instead of starting afresh.
set -uo pipefail
end=$1
shift
out=${OUT:-gpu-results}
mkdir -p "$out"
export PYTHONUNBUFFERED=1
export PYTHONPATH="$PWD/.whl/site:$PWD/packages/biwkv4-kernel/src:$PWD/packages/rwkv-blocks/src:$PWD/packages/hpcm-models/src"
[ "${KEEP:-0}" = 1 ] || rm -rf runs/gpu
mkdir -p runs/gpu
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee runs/gpu/gpu.txt
python3 -c "import torch; print('torch', torch.__version__)" | tee -a runs/gpu/gpu.txt
python3 -c "import numba, triton; print('numba', numba.__version__, 'triton', triton.__version__)" \
    2>&1 | tail -1 | tee -a runs/gpu/gpu.txt
# Several processes share the GPU: MPS lets their kernels run side by side instead of in turns.
if command -v nvidia-cuda-mps-control >/dev/null && nvidia-cuda-mps-control -d 2>/dev/null; then
    check='import torch; assert float((torch.ones(4, device="cuda") * 2).sum()) == 8'
    if timeout 60 python3 -c "$check" && timeout 60 python3 -c "$check"; then
        echo "MPS on" | tee -a runs/gpu/gpu.txt
    else
        echo quit | nvidia-cuda-mps-control
        echo "MPS failed its check: off" | tee -a runs/gpu/gpu.txt
    fi
fi
# Build the Bi-WKV kernel once, before the runs start (each would otherwise race to build it).
python3 -c "import biwkv4_kernel as b; print('biwkv4 CUDA kernel:', b.cuda_kernel_available())" \
    | tee -a runs/gpu/gpu.txt
# One train_codecs.py per group, side by side; each writes its own summary.
groups=() group=()
for arg in "$@"; do
    if [ "$arg" = "---" ]; then groups+=("${group[*]}"); group=(); else group+=("$arg"); fi
done
[ ${#group[@]} -gt 0 ] && groups+=("${group[*]}")
pids=() n=0
for g in "${groups[@]}"; do
    n=$((n + 1))
    read -r -a args <<<"$g"
    python3 tools/train_codecs.py "${args[@]}" --data data/photos --output runs/gpu \
        --summary runs/gpu/summary-$n.json --deadline $((end - SECONDS)) \
        --export runs/gpu/weights >runs/gpu/group-$n.log 2>&1 &
    pids+=($!)
done
rc=0
for pid in "${pids[@]}"; do wait "$pid" || rc=1; done
tail -n 5 runs/gpu/group-*.log
(cd runs/gpu/weights && ls *.pt | xargs -n 2 | nl -w1 -s' ' | while read -r n files; do
    tar -cf "$out/weights-$n.tar" $files
done)
tar -czf "$out/logs.tar.gz" --exclude='*.pt' --exclude=tensorboard -C runs gpu
echo quit | nvidia-cuda-mps-control 2>/dev/null
exit $rc
