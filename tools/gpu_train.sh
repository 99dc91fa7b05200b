#!/usr/bin/env bash
# Train a plan of small codecs on the GPU machine (no network) and bring back their fp16 weights.
# Usage (device tool, carry [".whl", "data"]):
#   bash tools/gpu_train.sh PLAN TIME_BUDGET_S END_S [RUN_NAME...]
# TIME_BUDGET_S: training time the step count is fitted to (tools/train_codecs.py --time-budget);
# END_S: seconds after this script starts by which every run is stopped and exported regardless.
# Expects the photo set in data/photos (tools/build_dataset.py) and compressai + pytorch-msssim
# unpacked in .whl/site (tools/gpu_validate.sh says how). Writes to $OUT (else gpu-results/):
# weights-N.tar (the runs' fp16 weights NAME.pt, two a file: the device returns at most 8 files
# of 16 MiB) and logs.tar.gz (gpu.txt, summary.json, every run's logs and commands). The run
# directories themselves stay in runs/gpu/ on the machine.
set -uo pipefail
plan=$1 budget=$2 end=$3
shift 3
out=${OUT:-gpu-results}
mkdir -p "$out"
export PYTHONUNBUFFERED=1
export PYTHONPATH="$PWD/.whl/site:$PWD/packages/biwkv4-kernel/src:$PWD/packages/rwkv-blocks/src:$PWD/packages/hpcm-models/src"
rm -rf runs/gpu && mkdir -p runs/gpu
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
only=()
if [ $# -gt 0 ]; then only=(--only "$@"); fi
python3 tools/train_codecs.py "$plan" --data data/photos --output runs/gpu \
    --time-budget "$budget" --deadline $((end - SECONDS)) --export runs/gpu/weights "${only[@]}"
rc=$?
(cd runs/gpu/weights && ls *.pt | xargs -n 2 | nl -w1 -s' ' | while read -r n files; do
    tar -cf "$out/weights-$n.tar" $files
done)
tar -czf "$out/logs.tar.gz" --exclude='*.pt' --exclude=tensorboard -C runs gpu
echo quit | nvidia-cuda-mps-control 2>/dev/null
exit $rc
