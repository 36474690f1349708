#!/usr/bin/env bash
# The main job: set up .venv, then run face detection on the bundled sample, on the GPU where there is
# one, else the CPU. Writes out/face_detect_source.mp4 (annotated) and out/face_detect.jsonl (detections).
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/setup.sh
mkdir -p out
.venv/bin/streamflow run configs/face_detect.yaml --stats-json out/face_detect_stats.json "$@"
echo "annotated video: $(pwd)/out/face_detect_source.mp4"
echo "detections:      $(pwd)/out/face_detect.jsonl"
echo "per-stage stats: $(pwd)/out/face_detect_stats.json"
