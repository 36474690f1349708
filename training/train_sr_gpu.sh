#!/usr/bin/env bash
# The codec-aware training run of models/VSR.md, on a GPU host, two variants side by side on one GPU:
#   a: the shipped architecture (48 features, 8 blocks), starting from models/vsr_x2.onnx's weights;
#   b: a wider, deeper one (64 features, 10 blocks) from scratch.
# Each builds its own pool of codec-damaged clips first (libx264/libx265 through PyAV, in worker
# processes), then trains for MAX_SECONDS (default 380) and evaluates on the held-out sequences.
#   python training/train_sr.py data --out .gpudata_sr        # once, where the photo packages are installed
#   bash training/train_sr_gpu.sh OUTDIR
# Needs torch with CUDA and PyAV on the path (on the device host: benchmarks/gpu_session.sh OUT none, then
# its PYTHONPATH).
set -uo pipefail
out=${1:?usage: train_sr_gpu.sh OUTDIR}
mkdir -p "$out"
common=(--data .gpudata_sr --device cuda --steps 1000000 --max-seconds "${MAX_SECONDS:-380}" --batch 64 --patch 48
    --window 5 --bf16 --pool-clips "${POOL_CLIPS:-8000}" --pool-frames 7 --pool-side 96 --pool-workers 7
    --compressed-fraction 0.75 --eval-frames 9 --log-every 1000)
python3 training/train_sr.py train "${common[@]}" --features 48 --blocks 8 --init models/vsr_x2.onnx \
    --checkpoint "$out/vsr_a.pt" --eval-json "$out/vsr_a.json" --eval-md "$out/vsr_a.md" >"$out/vsr_a.log" 2>&1 &
python3 training/train_sr.py train "${common[@]}" --features 64 --blocks 10 \
    --checkpoint "$out/vsr_b.pt" --eval-json "$out/vsr_b.json" --eval-md "$out/vsr_b.md" >"$out/vsr_b.log" 2>&1 &
wait
for v in a b; do echo "== variant $v"; grep -E "pool:.*in|trained|parameters" "$out/vsr_$v.log"; cat "$out/vsr_$v.md"; done
