#!/usr/bin/env bash
# Everything we measure on the offline GPU host, in one go. Usage (on the host, from the repo root):
#   bash benchmarks/gpu_session.sh OUTDIR [tests|face|bench|sr|sr2|sr3|sr4|gil|demo|study|study2|all|final]
# Needs .gpu/site.tar.xz and .gpu/streamflow-*.whl (tools/gpu_bundle.sh) and, for the 1080p face benchmark, .gpu/faces1080.mp4
# (python tools/make_face_sample.py --scale 1.5 --frames 600 --crf 23 --out .gpu/faces1080.mp4).
set -uo pipefail
out=${1:?usage: gpu_session.sh OUTDIR [tests|face|bench|sr|sr2|sr3|sr4|gil|demo|study|study2|all|final]}
what=${2:-all}
mkdir -p "$out" /tmp/gpusite-root /tmp/sf
[ -d /tmp/gpusite-root/gpusite ] || tar -xJf .gpu/site.tar.xz -C /tmp/gpusite-root
# Stage types are found through the package's entry points, i.e. its installed metadata: take the
# dist-info of a wheel built from this tree (the code itself is imported from the tree, first on the path).
rm -rf /tmp/sfmeta && python3 - .gpu/streamflow-*.whl <<'PY'
import sys, zipfile
wheel = zipfile.ZipFile(sys.argv[1])
for name in wheel.namelist():
    if ".dist-info/" in name:
        wheel.extract(name, "/tmp/sfmeta")
PY
export PYTHONPATH=$PWD:/tmp/gpusite-root/gpusite:/tmp/sfmeta PYTHONUNBUFFERED=1
sf() { python3 -m streamflow.cli "$@"; }
step() { echo "== $1 ($(date +%T))"; }
nvidia-smi -L; python3 -c "import torch, PyNvVideoCodec, av; print('torch', torch.__version__, 'av', av.__version__)"

if [ "$what" = tests ] || [ "$what" = all ]; then
    step "GPU tests"
    timeout 300 python3 -m pytest -q -rs -m gpu -p no:cacheprovider tests >"$out/gpu_tests.txt" 2>&1
    echo "gpu tests rc=$?"; tail -30 "$out/gpu_tests.txt"
    step "overlap"
    timeout 60 python3 benchmarks/overlap.py --frames 100 --ms 5 --json "$out/overlap.json" | tail -12
fi

clip=.gpu/faces1080.mp4
if [ "$what" = face ] || [ "$what" = bench ] || [ "$what" = all ]; then
    step "face detection: pipeline vs serial (1080p, fp16, detections written, no encode)"
    FACES_CLIP=$clip FACES_OUT=/tmp/sf timeout 240 python3 -m streamflow.cli bench configs/face_detect_bench.yaml \
        --frames 1200 --warmup 100 --baseline serial --set source.loop=true \
        --baseline-set source.emit_batch=1 --baseline-set "detect.input_shapes={input.1: [1, 3, 384, 640]}" \
        --json "$out/face_bench.json" 2>&1 | grep -v "^streamflow: INFO" | tail -30
    step "face detection: hand-written loop and raw decode (same clip)"
    timeout 180 python3 benchmarks/face_detect_handwritten.py --clip $clip --frames 1200 --json "$out/handwritten.json" 2>&1 | tail -15
fi

if [ "$what" = bench ] || [ "$what" = all ]; then
    step "decode"
    timeout 150 python3 benchmarks/decode.py --clip $clip --repeat 2 --json "$out/decode.json" 2>&1 | tail -20
    step "infer"
    timeout 150 python3 benchmarks/infer.py --precision fp16 --input-shape 3x384x640 --frames 2048 \
        --json "$out/infer.json" 2>&1 | tail -15
fi
if [ "$what" = sr ] || [ "$what" = all ]; then
    step "super-resolution GPU tests"
    timeout 150 python3 -m pytest -q -rs -m gpu -p no:cacheprovider tests/models/test_vsr.py tests/stages/test_window.py \
        tests/stages/test_sr_postprocess.py tests/test_super_resolution.py 2>&1 | tail -15
    step "super-resolution: pipeline vs serial (640x360 -> 1280x720, fp16, CPU libx264 encode)"
    SR_OUT=/tmp/sf timeout 200 python3 -m streamflow.cli bench configs/super_resolution.yaml \
        --frames 240 --warmup 20 --baseline serial --set source.loop=true --set upscale.precision=fp16 \
        --set "upscale.input_shapes={frames: [4, 15, 360, 640]}" \
        --baseline-set window.emit_batch=1 \
        --baseline-set "upscale.input_shapes={frames: [1, 15, 360, 640]}" \
        --json "$out/sr_bench.json" 2>&1 | grep -v "^streamflow: INFO" | tail -30
fi

if [ "$what" = demo ] || [ "$what" = sr ] || [ "$what" = all ]; then
    step "face detection demo config end to end on the GPU (annotated video via CPU x264)"
    FACES_OUT=/tmp/sf timeout 120 python3 -m streamflow.cli run configs/face_detect.yaml --stats-json "$out/demo_stats.json" \
        2>&1 | grep -v "^streamflow: INFO" | tail -16
    python3 -c "import json; d=[json.loads(l) for l in open('/tmp/sf/face_detect.jsonl')]; print(len(d), 'lines,', sum(len(x['results'].get('boxes', [])) for x in d), 'boxes')"
fi
if [ "$what" = study ]; then
    # Why the super-resolution pipeline is bound by libx264: the encoder alone, under GIL pressure,
    # and the pipeline with the encoder replaced by a null sink.
    step "x264 study"
    timeout 200 python3 benchmarks/x264_study.py --frames 240 --json "$out/x264_study.json" 2>&1 | tail -20
    srbench() { SR_OUT=/tmp/sf timeout 120 python3 -m streamflow.cli bench "$1" \
        --frames 240 --warmup 20 --baseline serial --set source.loop=true --set upscale.precision=fp16 \
        --set "upscale.input_shapes={frames: [4, 15, 360, 640]}" --baseline-set window.emit_batch=1 \
        --baseline-set "upscale.input_shapes={frames: [1, 15, 360, 640]}" --json "$2" 2>&1 | grep -v "^streamflow: INFO" | tail -24; }
    step "super-resolution bench (config as shipped)"
    srbench configs/super_resolution.yaml "$out/sr_bench.json"
    step "super-resolution bench, null sink instead of encode"
    python3 -c "import yaml; c=yaml.safe_load(open('configs/super_resolution.yaml')); c['stages'][-1]={'name':'video','type':'null'}; yaml.safe_dump(c, open('/tmp/sr_null.yaml','w'))"
    srbench /tmp/sr_null.yaml "$out/sr_null.json"
    if ls .gpu/py_spy-*.whl >/dev/null 2>&1; then
        step "py-spy: which threads hold the GIL in the shipped pipeline"
        python3 -m pip install -q --no-index --no-deps --target /tmp/pyspy .gpu/py_spy-*.whl
        SR_OUT=/tmp/sf timeout 90 /tmp/pyspy/bin/py-spy record --gil --threads -r 200 -f raw -o "$out/spy_gil.txt" -- \
            python3 -m streamflow.cli bench configs/super_resolution.yaml --frames 240 --warmup 20 --baseline none \
            --set source.loop=true --set upscale.precision=fp16 --set "upscale.input_shapes={frames: [4, 15, 360, 640]}" \
            2>&1 | grep -v "^streamflow: INFO" | tail -5
    fi
fi
if [ "$what" = sr2 ]; then
    # Super-resolution benchmark on a 300-frame 640x360 clip (python tools/make_sr_clip.py --frames 300
    # --out .gpu/sr_bench.mp4; no looping), after the encoder moved to a child process and the model's
    # Resize/Slice were frozen (CUDA graph capture works). Baselines: the hand-written loop (encoder in
    # the loop's thread) and the same serial loop with the child-process encoder.
    step "GPU tests"
    timeout 200 python3 -m pytest -q -rs -m gpu -p no:cacheprovider tests >"$out/gpu_tests.txt" 2>&1
    echo "gpu tests rc=$?"; grep -E "passed|failed|^FAILED|^ERROR|Fatal" "$out/gpu_tests.txt" | tail -12
    sr() { SR_CLIP=.gpu/sr_bench.mp4 SR_OUT=/tmp/sf timeout 120 python3 -m streamflow.cli bench configs/super_resolution.yaml \
        --frames 240 --warmup 20 --baseline serial --set upscale.precision=fp16 \
        --set "upscale.input_shapes={frames: [4, 15, 360, 640]}" --baseline-set window.emit_batch=1 \
        --baseline-set "upscale.input_shapes={frames: [1, 15, 360, 640]}" "$@" 2>&1 | grep -v "^streamflow: INFO" | tail -22; }
    step "SR bench: pipeline vs hand-written serial loop (encoder in the loop's thread)"
    sr --baseline-set video.cpu_encoder=thread --json "$out/sr_thread_baseline.json"
    step "SR bench: pipeline vs serial loop with the same child-process encoder"
    sr --json "$out/sr_process_baseline.json"
    step "SR bench: pipeline with the encoder in its thread (before), vs hand-written loop"
    sr --set video.cpu_encoder=thread --baseline-set video.cpu_encoder=thread --json "$out/sr_before.json"
    python3 -c "import av; c=av.open('/tmp/sf/super_resolution.mp4'); s=c.streams.video[0]; print('output', s.width, s.height, s.frames, 'frames')"
fi
if [ "$what" = study2 ]; then
    step "GPU tests"
    timeout 200 python3 -m pytest -q -rs -m gpu -p no:cacheprovider tests >"$out/gpu_tests.txt" 2>&1
    echo "gpu tests rc=$?"; grep -E "passed|failed|^FAILED|^ERROR|Fatal" "$out/gpu_tests.txt" | tail -12
    step "SR output (1280x720, 300 frames) to study x264 on the content the benchmark encodes"
    SR_CLIP=.gpu/sr_bench.mp4 SR_OUT=/tmp/sf timeout 120 python3 -m streamflow.cli run configs/super_resolution.yaml -q \
        --set upscale.precision=fp16 --set "upscale.input_shapes={frames: [4, 15, 360, 640]}" --set video.crf=12 2>&1 | tail -3
    step "x264 study on the SR output"
    timeout 150 python3 benchmarks/x264_study.py --clip /tmp/sf/super_resolution.mp4 --scale 1 --frames 240 --quick \
        --json "$out/x264_sr_output.json" 2>&1 | tail -8
fi
if [ "$what" = sr3 ]; then
    # Parallel segment encoders: the shipped config (encoders: 3) and 1/2 encoders, each against the
    # hand-written serial loop (one libx264 in the loop's thread); then the shipped config against a
    # serial loop that uses the same 3 encoders.
    step "GPU tests"
    timeout 200 python3 -m pytest -q -rs -m gpu -p no:cacheprovider tests >"$out/gpu_tests.txt" 2>&1
    echo "gpu tests rc=$?"; grep -E "passed|failed|^FAILED|^ERROR|Fatal" "$out/gpu_tests.txt" | tail -12
    sr() { SR_CLIP=.gpu/sr_bench.mp4 SR_OUT=/tmp/sf timeout 120 python3 -m streamflow.cli bench configs/super_resolution.yaml \
        --frames 240 --warmup 20 --baseline serial --set upscale.precision=fp16 \
        --set "upscale.input_shapes={frames: [4, 15, 360, 640]}" --baseline-set window.emit_batch=1 \
        --baseline-set "upscale.input_shapes={frames: [1, 15, 360, 640]}" "$@" 2>&1 | grep -v "^streamflow: INFO" | tail -${SRTAIL:-22}; }
    step "SR model at the bench shape: CUDA graph or eager?"
    python3 -c "
import logging, torch; logging.basicConfig(level=logging.DEBUG, format='%(levelname)s %(message)s')
for n in ('PIL', 'onnx2torch', 'matplotlib'): logging.getLogger(n).setLevel(logging.WARNING)
from streamflow.inference.torch_backend import TorchBackend
from streamflow.inference.base import InputSpec, Precision
with TorchBackend('models/vsr_x2.onnx', {'frames': InputSpec.static('frames', [4, 15, 360, 640])}, device='cuda', precision=Precision.FP16) as b: print(b.description)
" 2>&1 | grep -v "^DEBUG.*\(onnx\|PIL\)" | tail -5
    step "SR bench: shipped config (3 encoders) vs hand-written serial loop (1 encoder in the loop)"
    sr --baseline-set video.encoders=1 --baseline-set source.emit_batch=1 --json "$out/sr_enc3.json"
    python3 -c "import av; c=av.open('/tmp/sf/super_resolution.mp4'); s=c.streams.video[0]; print('baseline output', s.width, s.height, s.frames, 'frames')"
    step "SR bench: 2 encoders vs hand-written loop"
    SRTAIL=9 sr --set video.encoders=2 --baseline-set video.encoders=1 --baseline-set source.emit_batch=1 --json "$out/sr_enc2.json"
    step "SR bench: 1 encoder vs hand-written loop"
    SRTAIL=9 sr --set video.encoders=1 --baseline-set video.encoders=1 --baseline-set source.emit_batch=1 --json "$out/sr_enc1.json"
    step "SR bench: shipped config vs serial loop with the same 3 encoders"
    SRTAIL=9 sr --baseline-set source.emit_batch=1 --json "$out/sr_enc3_same.json"
    step "SR run of the shipped config: output check"
    SR_CLIP=.gpu/sr_bench.mp4 SR_OUT=/tmp/sf2 bash -c 'mkdir -p /tmp/sf2; timeout 60 python3 -m streamflow.cli run configs/super_resolution.yaml -q --set upscale.precision=fp16 --set "upscale.input_shapes={frames: [4, 15, 360, 640]}" --stats-json /tmp/sf2/stats.json 2>&1 | grep -v INFO | tail -3'
    python3 -c "import av; c=av.open('/tmp/sf2/super_resolution.mp4'); s=c.streams.video[0]; f=list(c.decode(s)); print('run output', s.width, s.height, len(f), 'frames, keyframes', sum(x.key_frame for x in f), 'last pts', f[-1].pts, s.time_base)"
fi
if [ "$what" = gil ]; then
    # Where the GIL goes in the shipped SR pipeline (py-spy --gil), and what a shorter GIL switch
    # interval does to it.
    srb() { SR_CLIP=.gpu/sr_bench.mp4 SR_OUT=/tmp/sf timeout 100 python3 -c 'import sys; sys.setswitchinterval(float(sys.argv.pop(1))); from streamflow.cli import main; main()' "$@" \
        --frames 240 --warmup 20 --set upscale.precision=fp16 --set "upscale.input_shapes={frames: [4, 15, 360, 640]}" \
        --baseline-set window.emit_batch=1 --baseline-set "upscale.input_shapes={frames: [1, 15, 360, 640]}" \
        --baseline-set video.encoders=1 2>&1 | grep -v "^streamflow: INFO" | tail -${SRTAIL:-22}; }
    step "switch interval 5 ms (default), 3 encoders"
    srb 0.005 bench configs/super_resolution.yaml --baseline serial --json "$out/gil_5ms.json"
    step "switch interval 1 ms, 3 encoders"
    SRTAIL=10 srb 0.001 bench configs/super_resolution.yaml --baseline serial --json "$out/gil_1ms.json"
    step "switch interval 0.5 ms, 3 encoders"
    SRTAIL=10 srb 0.0005 bench configs/super_resolution.yaml --baseline serial --json "$out/gil_05ms.json"
    step "switch interval 0.5 ms, 2 encoders"
    SRTAIL=10 srb 0.0005 bench configs/super_resolution.yaml --baseline serial --set video.encoders=2 --json "$out/gil_05ms_e2.json"
    if ls .gpu/py_spy-*.whl >/dev/null 2>&1; then
        step "py-spy --gil on the shipped pipeline (no baseline)"
        python3 -m pip install -q --no-index --no-deps --target /tmp/pyspy .gpu/py_spy-*.whl
        SR_CLIP=.gpu/sr_bench.mp4 SR_OUT=/tmp/sf timeout 90 /tmp/pyspy/bin/py-spy record --gil --threads -r 250 -f raw \
            -o "$out/spy_gil3.txt" -- python3 -m streamflow.cli bench configs/super_resolution.yaml --frames 240 \
            --warmup 20 --baseline none --set upscale.precision=fp16 --set "upscale.input_shapes={frames: [4, 15, 360, 640]}" \
            2>&1 | grep -v "^streamflow: INFO" | tail -3
    fi
fi
if [ "$what" = sr4 ] || [ "$what" = final ]; then
    # The SR benchmark in alternating rounds (the host's CPU speed drifts by 20-30 % between minutes):
    # 1, 2 and 3 parallel segment encoders, each against the hand-written serial loop.
    srr() { SR_CLIP=.gpu/sr_bench.mp4 SR_OUT=/tmp/sf timeout 150 python3 -m streamflow.cli bench configs/super_resolution.yaml \
        --frames 240 --warmup 20 --repeat 3 --baseline serial --set upscale.precision=fp16 \
        --set "upscale.input_shapes={frames: [4, 15, 360, 640]}" --baseline-set window.emit_batch=1 \
        --baseline-set "upscale.input_shapes={frames: [1, 15, 360, 640]}" --baseline-set video.encoders=1 \
        --baseline-set source.emit_batch=1 "$@" 2>&1 | grep -v "^streamflow: INFO" | tail -${SRTAIL:-24}; }
    step "SR bench, 3 rounds: config as shipped vs hand-written serial loop"
    srr --json "$out/sr_shipped.json"
    [ "$what" = final ] || for n in 1 2 3; do
        step "SR bench, 3 rounds: $n encoder(s) vs hand-written serial loop"
        SRTAIL=11 srr --set video.encoders=$n --json "$out/sr_r_enc$n.json"
    done
fi
if [ "$what" = final ]; then
    # After the SR rounds above: all GPU tests, the face-detection benchmark and the demo config.
    step "GPU tests"
    timeout 150 python3 -m pytest -q -rs -m gpu -p no:cacheprovider tests >"$out/gpu_tests.txt" 2>&1
    echo "gpu tests rc=$?"; grep -E "passed|failed|^FAILED|^ERROR|Fatal" "$out/gpu_tests.txt" | tail -12
    step "face detection: pipeline vs serial (1080p, fp16, detections written, no encode)"
    FACES_CLIP=$clip FACES_OUT=/tmp/sf timeout 150 python3 -m streamflow.cli bench configs/face_detect_bench.yaml \
        --frames 1200 --warmup 100 --baseline serial --set source.loop=true \
        --baseline-set source.emit_batch=1 --baseline-set "detect.input_shapes={input.1: [1, 3, 384, 640]}" \
        --json "$out/face_bench.json" 2>&1 | grep -v "^streamflow: INFO" | tail -12
    step "face detection demo config on the GPU"
    FACES_OUT=/tmp/sf timeout 40 python3 -m streamflow.cli run configs/face_detect.yaml -q \
        --stats-json "$out/demo_stats.json" 2>&1 | grep -v "^streamflow: INFO" | tail -5
    python3 -c "import json, av; d=[json.loads(l) for l in open('/tmp/sf/face_detect.jsonl')]; print(len(d), 'lines', sum(len(x['results'].get('boxes', [])) for x in d), 'boxes;', len(list(av.open('/tmp/sf/face_detect.mp4').decode(video=0))), 'frames in the MP4')"
fi
step done
