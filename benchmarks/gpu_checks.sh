#!/usr/bin/env bash
# The GPU items in one run, their results in one tar: the CUDA tests (tests/test_cuda.py) and the MAE
# ViT-B/16 table of the hardware issue (#19, item 5): mimkit against transformers' ViTMAE at 224 px, bf16,
# eager and compiled, MFU against the GPU's measured bf16 peak, and mimkit's step fed by its own data path
# (decoded uint8 batches, pinned, augmented on the GPU) next to the same step on a fixed batch.
#
#   bash benchmarks/gpu_checks.sh                      # results in $OUT (else runs/gpu_checks)/gpu_checks.tgz
#   DEVICE=cpu SHAPE=fmnist ROUNDS=1 bash benchmarks/gpu_checks.sh   # a smoke run of the script on a CPU
#
# It needs torch with CUDA, transformers (the peer), pytest and mimkit's own dependencies; mimkit itself is
# read from src/. This project's device machines have no network and no kornia: download its wheels here
# for their Python 3.12 (kornia and kornia_rs, `pip download --no-deps --only-binary=:all: --python-version
# 3.12 ... -d .whl`, .whl/ ignored by git), carry .whl, and run
#   python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl &&
#   PYTHONPATH=/tmp/site bash benchmarks/gpu_checks.sh
# Budget: about 8 minutes on an H100/H200; each part has its own timeout so that one part's hang still
# leaves the others' results.
set -uo pipefail
out="${OUT:-runs/gpu_checks}"
work="$out/gpu_checks"
mkdir -p "$work"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
py="${PYTHON:-python3}"
device="${DEVICE:-cuda}"
shape="${SHAPE:-vit_base_224}"
rounds="${ROUNDS:-3}"

{
    date -u
    git log -1 --format='commit %H' 2>/dev/null
    nvidia-smi 2>&1
    "$py" -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda)'
    "$py" -c 'import transformers; print("transformers", transformers.__version__)'
} >"$work/machine.txt" 2>&1

timeout 180 "$py" -m pytest -q -p no:cacheprovider tests/test_cuda.py >"$work/test_cuda.log" 2>&1
echo "test_cuda.py: exit $?" | tee -a "$work/summary.txt"

timeout 360 "$py" benchmarks/mae_throughput.py --device "$device" --shape "$shape" --precision bf16 \
    --compile both --data-path --rounds "$rounds" --json "$work/mae_throughput.json" \
    >"$work/mae_throughput.log" 2>&1
echo "mae_throughput.py: exit $?" | tee -a "$work/summary.txt"

tar czf "$out/gpu_checks.tgz" -C "$out" gpu_checks
echo "wrote $out/gpu_checks.tgz"
