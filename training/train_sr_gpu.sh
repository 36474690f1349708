#!/usr/bin/env bash
# The codec-aware training runs of models/VSR.md, on a GPU host: several variants side by side on one GPU.
#   python training/train_sr.py data --out .gpudata_sr        # once, where the photo packages are installed
#   bash training/train_sr_gpu.sh OUTDIR "NAME: extra train options" ...
# Each variant builds its own pool of codec-damaged clips (libx264/libx265 through PyAV, in WORKERS worker
# processes, default 16 / number of variants), trains for MAX_SECONDS (default 380) and evaluates on the
# held-out sequences; OUTDIR gets vsr_NAME.pt/.json/.md/.log. Needs torch with CUDA and PyAV on the path
# (on the device host: benchmarks/gpu_session.sh OUT none, then its PYTHONPATH).
set -uo pipefail
out=${1:?usage: train_sr_gpu.sh OUTDIR "NAME: options" ...}
shift
mkdir -p "$out"
workers=${WORKERS:-$((16 / $#))}
common=(--data .gpudata_sr --device cuda --steps 1000000 --max-seconds "${MAX_SECONDS:-380}" --batch 64 --patch 48
    --window 5 --bf16 --pool-clips "${POOL_CLIPS:-6000}" --pool-frames 7 --pool-side 96 --pool-workers "$workers"
    --eval-frames 9 --log-every 1000)
names=()
for variant in "$@"; do
    name=${variant%%:*}
    names+=("$name")
    # shellcheck disable=SC2086  # the variant's options are words
    python3 training/train_sr.py train "${common[@]}" ${variant#*:} --checkpoint "$out/vsr_$name.pt" \
        --eval-json "$out/vsr_$name.json" --eval-md "$out/vsr_$name.md" >"$out/vsr_$name.log" 2>&1 &
done
wait
for name in "${names[@]}"; do
    echo "== variant $name: $(grep -m1 -o "init.*" "$out/vsr_$name.log" | head -1)"
    grep -E "clips in|trained" "$out/vsr_$name.log"
    grep -E "^###|mean" "$out/vsr_$name.md"
done
