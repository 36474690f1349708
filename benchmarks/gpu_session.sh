#!/usr/bin/env bash
# The GPU tests and benchmarks, in one go, on a GPU machine (see benchmarks/README.md). From the repo root:
#   bash benchmarks/gpu_session.sh OUTDIR [tests|face|face-models|bench|sr|sr-bench|sr-variants|sr-process|study|demo|operate|workers|workers-live|startup|sr-quick|live-steady|throughput|live-curve|live-graphs|all|final]
# The environment: either the package installed (`pip install -e ".[gpu,dev]"`), or, on a host without
# package access, .gpu/site.tar.xz and .gpu/streamflow-*.whl built elsewhere by benchmarks/gpu_bundle.sh.
# Inputs: for the 1080p face benchmark .gpu/faces1080.mp4
# (python tools/make_face_sample.py --scale 1.5 --frames 600 --crf 23 --out .gpu/faces1080.mp4); for the
# super-resolution benchmark .gpu/sr_bench.mp4 (python tools/make_sr_clip.py --frames 300 --out .gpu/sr_bench.mp4);
# for the GIL profile in `study`, a py-spy wheel in .gpu/. Any other mode only sets up the environment.
# SCRATCH (default /tmp/streamflow-gpu): where unpacked packages and benchmark outputs go.
set -uo pipefail
usage="usage: gpu_session.sh OUTDIR [tests|face|face-models|bench|sr|sr-bench|sr-variants|sr-process|study|demo|operate|workers|workers-live|startup|sr-quick|live-steady|throughput|live-curve|live-graphs|all|final]"
out=${1:?$usage}
what=${2:-all}
scratch=${SCRATCH:-/tmp/streamflow-gpu}
mkdir -p "$out" "$scratch/out"
if [ -f .gpu/site.tar.xz ]; then
    # Packages unpacked rather than installed (the host's own torch stays untouched).
    [ -d "$scratch/site/gpusite" ] || { mkdir -p "$scratch/site" && tar -xJf .gpu/site.tar.xz -C "$scratch/site"; }
    # Stage types are found through the package's entry points, i.e. its installed metadata: take the
    # dist-info of a wheel built from this tree (the code itself is imported from the tree, first on the path).
    rm -rf "$scratch/meta" && python3 - .gpu/streamflow-*.whl "$scratch/meta" <<'PY'
import sys, zipfile
wheel = zipfile.ZipFile(sys.argv[1])
for name in wheel.namelist():
    if ".dist-info/" in name:
        wheel.extract(name, sys.argv[2])
PY
    export PYTHONPATH=$PWD:$scratch/site/gpusite:$scratch/meta
fi
export PYTHONUNBUFFERED=1
step() { echo "== $1 ($(date +%T))"; }
nvidia-smi -L; python3 -c "import torch, PyNvVideoCodec, av; print('torch', torch.__version__, 'av', av.__version__)"

# Every GPU test; the whole log goes to $out/gpu_tests.txt. $1: time limit in seconds.
gpu_tests() {
    step "GPU tests"
    timeout "${1:-300}" python3 -m pytest -q -rs -m gpu -p no:cacheprovider tests >"$out/gpu_tests.txt" 2>&1
    echo "gpu tests rc=$?"; grep -E "passed|failed|^FAILED|^ERROR|Fatal" "$out/gpu_tests.txt" | tail -12
}

# The super-resolution benchmark as the README reports it: pipeline and serial baseline alternate
# (REPEAT rounds, default 3: a shared host's CPU speed drifts between minutes), 240 frames
# timed after 20, fp16, the model replayed from a CUDA graph at batch 4; the baseline is the same
# pipeline with concurrency off (batch-1 shapes set by the bench itself) and one libx264 in the video
# stage's thread. Arguments go to `streamflow bench`.
# SR_CLIP: the input (default the 300-frame clip); CONFIG: a variant of the config (its `video` stage
# need not be an encoder); SWITCH_INTERVAL: the GIL switch interval in seconds (Python's default
# 0.005); TAIL: lines shown.
sr_bench() {
    # The baseline's libx264 in its stage's thread, whatever --set asks of the pipeline's encoder.
    local one_encoder=(--baseline-set video.encoders=1 --baseline-set video.cpu_encoder=thread)
    [ -n "${CONFIG:-}" ] && one_encoder=()
    SR_CLIP=${SR_CLIP:-.gpu/sr_bench.mp4} SR_OUT=$scratch/out timeout 200 python3 -c \
        "import sys; sys.setswitchinterval(${SWITCH_INTERVAL:-0.005}); from streamflow.cli import main; main()" \
        bench "${CONFIG:-configs/super_resolution.yaml}" --frames 240 --warmup 20 --repeat "${REPEAT:-3}" \
        --baseline serial --set upscale.precision=fp16 --set "upscale.input_shapes={frames: [4, 15, 360, 640]}" \
        "${one_encoder[@]}" "$@" 2>&1 |
        grep -v "^streamflow: INFO" | tail -"${TAIL:-24}"
}

# The face-detection benchmark (1080p, fp16, detections written, no encode) against its serial loop.
face_bench() {
    step "face detection: pipeline vs serial (1080p, fp16, detections written, no encode)"
    FACES_CLIP=$clip FACES_OUT=$scratch/out timeout 240 python3 -m streamflow.cli bench configs/face_detect_bench.yaml \
        --frames 1200 --warmup 100 --baseline serial --json "$out/face_bench.json" 2>&1 |
        grep -v "^streamflow: INFO" | tail -"${TAIL:-30}"
}

# CenterFace and UltraFace RFB-640 through the same benchmark pipeline (1080p, fp16, torch backend,
# detections written, no encode), alternating ROUNDS times (default 2): this host's CPU speed drifts
# between minutes, so neither model gets all the good minutes. UltraFace: the preprocessing and
# decoder of configs/face_detect_ultraface.yaml.
face_models() {
    step "face models: CenterFace vs UltraFace RFB-640 (1080p, fp16, torch backend, pipeline only)"
    local common=(--frames 1200 --warmup 100 --baseline none --set source.loop=true --set detect.backend=torch)
    local ultraface=(--set faces.type=ultraface --set faces.threshold=0.9 --set preprocess.height=480
        --set "preprocess.mean=[127,127,127]" --set "preprocess.std=[128,128,128]" --set preprocess.pad_value=127
        --set detect.model=models/version-RFB-640.onnx --set "detect.input_shapes={input: [8, 3, 480, 640]}")
    for round in $(seq "${ROUNDS:-2}"); do
        for model in centerface ultraface; do
            local extra=()
            [ "$model" = ultraface ] && extra=("${ultraface[@]}")
            echo "-- $model, round $round"
            FACES_CLIP=$clip FACES_OUT=/tmp/sf timeout 80 python3 -m streamflow.cli bench configs/face_detect_bench.yaml \
                "${common[@]}" "${extra[@]}" --json "$out/face_${model}_$round.json" 2>&1 |
                grep -v "^streamflow: INFO" | grep -E "pipeline|Error|error" | head -3
        done
    done
}

# The face-detection demo config end to end on the GPU (annotated video through CPU libx264).
demo() {
    step "face detection demo config on the GPU"
    FACES_OUT=$scratch/out timeout 120 python3 -m streamflow.cli run configs/face_detect.yaml -q \
        --stats-json "$out/demo_stats.json" 2>&1 | grep -v "^streamflow: INFO" | tail -5
    python3 -c "import json, av; d=[json.loads(l) for l in open('$scratch/out/face_detect.jsonl')]; print(len(d), 'lines', sum(len(x['results'].get('boxes', [])) for x in d), 'boxes;', len(list(av.open('$scratch/out/face_detect_source.mp4').decode(video=0))), 'frames in the MP4')"
}

clip=.gpu/faces1080.mp4
if [ "$what" = tests ] || [ "$what" = all ]; then
    gpu_tests 300
    step "overlap"
    timeout 60 python3 benchmarks/overlap.py --frames 100 --ms 5 --json "$out/overlap.json" | tail -12
fi

if [ "$what" = face-models ]; then
    face_models
fi

if [ "$what" = face ] || [ "$what" = bench ] || [ "$what" = all ]; then
    face_bench
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
        tests/stages/test_sr_output.py tests/test_super_resolution.py 2>&1 | tail -15
fi
if [ "$what" = sr ] || [ "$what" = all ] || [ "$what" = final ]; then
    step "super-resolution: config as shipped vs the hand-written serial loop, 300-frame clip"
    sr_bench --json "$out/sr_bench.json"
    step "super-resolution: the same with the shipped 60-frame sample, looped"
    TAIL=9 SR_CLIP=samples/sr_input.mp4 sr_bench --set source.loop=true --json "$out/sr_loop.json"
fi

if [ "$what" = sr-bench ]; then
    # The shipped super-resolution benchmark only, twice on the 300-frame clip and once looped: for
    # another machine start (a shared host's CPU speed differs between starts).
    for run in 1 2; do
        step "super-resolution: config as shipped, 300-frame clip, run $run"
        TAIL=11 sr_bench --json "$out/sr_bench_$run.json"
    done
    step "super-resolution: config as shipped, the shipped 60-frame sample looped"
    TAIL=11 SR_CLIP=samples/sr_input.mp4 sr_bench --set source.loop=true --json "$out/sr_loop.json"
fi

if [ "$what" = sr-variants ]; then
    # The README's other super-resolution rows: CPU encoder options and the GIL switch interval.
    for n in 2 3; do
        step "super-resolution: $n parallel segment encoders"
        TAIL=11 sr_bench --set video.encoders=$n --json "$out/sr_encoders$n.json"
    done
    step "super-resolution: the encoder in a child process"
    TAIL=11 sr_bench --set video.cpu_encoder=process --json "$out/sr_process.json"
    for interval in 0.001 0.0005; do
        step "super-resolution: GIL switch interval $interval s"
        TAIL=11 SWITCH_INTERVAL=$interval sr_bench --json "$out/sr_switch_$interval.json"
    done
fi

if [ "$what" = sr-process ]; then
    # The SR model alone (the GPU's share), then segment encoders in child processes (own GIL each)
    # and NHWC fp16 convolutions, against the shipped config; every run against the same serial loop
    # (one libx264 in the loop's thread), which gets the same model options.
    for layout in "" "--channels-last --cudnn-benchmark"; do
        step "SR model alone, fp16, batch 4 and 1 ${layout:-(NCHW)}"
        timeout 120 python3 benchmarks/infer.py --model models/vsr_x2.onnx --input-shape 15x360x640 --batches 1,4 \
            --frames 512 --backend torch $layout 2>&1 | tail -4
    done
    fast=(--set upscale.channels_last=true --set upscale.cudnn_benchmark=true)
    step "super-resolution: config as shipped (one encoder in the stage's thread)"
    TAIL=11 sr_bench --json "$out/sr_thread1.json"
    step "super-resolution: 2 segment encoders in child processes"
    TAIL=11 sr_bench --set video.cpu_encoder=process --set video.encoders=2 --json "$out/sr_process2.json"
    for n in ${SR_PROCESS_ENCODERS:-2 3}; do
        step "super-resolution: $n segment encoders in child processes, NHWC + cuDNN benchmark"
        TAIL=11 sr_bench --set video.cpu_encoder=process --set video.encoders=$n "${fast[@]}" \
            --json "$out/sr_process${n}_nhwc.json"
    done
    step "super-resolution: one encoder in the stage's thread, NHWC + cuDNN benchmark"
    TAIL=11 sr_bench "${fast[@]}" --json "$out/sr_thread1_nhwc.json"
    step "model and encoder GPU tests"
    timeout 150 python3 -m pytest -q -rs -m gpu -p no:cacheprovider tests/video tests/models/test_vsr.py 2>&1 | tail -8
fi

if [ "$what" = study ]; then
    # Why the super-resolution pipeline is bound by libx264: the encoder alone (also under GIL
    # pressure and on the content the benchmark encodes), the pipeline with the encoder replaced by a
    # null sink, and which threads hold the GIL.
    step "x264 study (bicubic x2 of the sample)"
    timeout 200 python3 benchmarks/x264_study.py --frames 240 --json "$out/x264_study.json" 2>&1 | tail -20
    step "x264 study on the model's output"
    SR_CLIP=.gpu/sr_bench.mp4 SR_OUT=$scratch/out timeout 120 python3 -m streamflow.cli run configs/super_resolution.yaml -q \
        --set upscale.precision=fp16 --set "upscale.input_shapes={frames: [4, 15, 360, 640]}" --set video.crf=12 2>&1 | tail -3
    timeout 150 python3 benchmarks/x264_study.py --clip $scratch/out/super_resolution_source.mp4 --scale 1 --frames 240 --quick \
        --json "$out/x264_sr_output.json" 2>&1 | tail -8
    step "super-resolution with a null sink instead of the encoder"
    python3 -c "import yaml; c=yaml.safe_load(open('configs/super_resolution.yaml')); c['stages'][-1]={'name':'video','type':'null'}; yaml.safe_dump(c, open('$scratch/sr_null.yaml','w'))"
    CONFIG=$scratch/sr_null.yaml sr_bench --json "$out/sr_null.json"
    if ls .gpu/py_spy-*.whl >/dev/null 2>&1; then
        step "py-spy: which threads hold the GIL in the shipped pipeline (no baseline)"
        python3 -m pip install -q --no-index --no-deps --target $scratch/pyspy .gpu/py_spy-*.whl
        SR_CLIP=.gpu/sr_bench.mp4 SR_OUT=$scratch/out timeout 90 $scratch/pyspy/bin/py-spy record --gil --threads -r 250 -f raw \
            -o "$out/spy_gil.txt" -- python3 -m streamflow.cli bench configs/super_resolution.yaml --frames 240 \
            --warmup 20 --baseline none --set upscale.precision=fp16 --set "upscale.input_shapes={frames: [4, 15, 360, 640]}" \
            2>&1 | grep -v "^streamflow: INFO" | tail -3
    fi
fi

if [ "$what" = demo ] || [ "$what" = sr ] || [ "$what" = all ]; then
    demo
fi

if [ "$what" = operate ]; then
    # What the 2026-11-29 third session left unmeasured on the GPU, in one call (about 8 minutes):
    # issue 14's scrape cost with the loop watcher off (alternating windows), issue 13's start-up
    # breakdown (two runs: the second with warm caches), memory over running time, and the
    # many-source throughput with the runner's new loop-to-thread hand-off.
    api=(--config configs/face_detect_bench.yaml --sources 64 --width 1280 --height 720 --clip-frames 300)
    step "control API: /metrics every 1 s and 0.1 s, 4 s windows in turn, no loop watcher"
    FACES_OUT=$scratch/out timeout 120 python3 benchmarks/control_api.py "${api[@]}" --seconds 4 --rounds 3 \
        --adds 3 --json "$out/control_api_rounds.json" 2>&1 | grep -v "INFO" | head -4
    step "control API: the same, GET /healthz"
    FACES_OUT=$scratch/out timeout 100 python3 benchmarks/control_api.py "${api[@]}" --seconds 4 --rounds 2 \
        --adds 1 --scrape-path /healthz --json "$out/control_api_healthz.json" 2>&1 | grep -v "INFO" | head -4
    for run in cold warm; do
        step "start-up of streamflow run, 1 source ($run)"
        FACES_CLIP=$clip FACES_OUT=$scratch/out timeout 120 python3 -m streamflow.cli run configs/face_detect_bench.yaml \
            --max-frames 60 --stats-json "$out/startup_$run.json" 2>&1 | grep "start-up:"
    done
    step "memory over running time: 32 sources, 2 minutes"
    timeout 200 python3 benchmarks/soak.py --config configs/face_detect_bench.yaml --sources 32 --width 1280 \
        --height 720 --clip-frames 300 --minutes 2 --every 10 --warmup 40 --json "$out/soak.json" 2>&1 |
        grep -v "INFO" | tail -9
    step "many sources, unpaced, against raw NVDEC"
    FACES_CLIP=$clip FACES_OUT=$scratch/out timeout 200 python3 -m streamflow.cli bench configs/face_detect_bench.yaml --sources 32 \
        --sources 64 --frames-per-source 240 --warmup 512 --raw-threads 14,21 --json "$out/many.json" 2>&1 |
        grep -v "INFO" | tail -12
fi

if [ "$what" = workers ] || [ "$what" = workers-live ] || [ "$what" = live-steady ] || [ "$what" = throughput ] ||
    [ "$what" = live-curve ] || [ "$what" = live-graphs ]; then
    # Issue 13 and 14 over worker processes (streamflow run --workers): the many-source throughput of
    # one process against 4 and 8 workers and raw NVDEC, the paced-camera curve, and the control API
    # at the driver. Detector batch 32 as in the README's many-source table, with CUDA graphs at the
    # smaller batches of GRAPH_BATCHES too (default [8,16,24]; empty: the batch-32 graph alone).
    many=(configs/face_detect_bench.yaml --set preprocess.batch_size=32 --set "detect.input_shapes={input.1: [32, 3, 384, 640]}")
    graph_batches=${GRAPH_BATCHES-[8,16,24]}
    [ -n "$graph_batches" ] && many+=(--set "detect.graph_batches=$graph_batches")
fi
if [ "$what" = workers ]; then
    step "many sources, unpaced: one process and worker processes, against raw NVDEC"
    FACES_CLIP=$clip FACES_OUT=$scratch/out timeout 330 python3 -m streamflow.cli bench "${many[@]}" --sources 32 \
        --sources 64 --workers 1 --workers 4 --workers 8 --frames-per-source 600 --warmup 4096 --raw-threads 14,21 \
        --json "$out/workers.json" 2>&1 | grep -v "INFO" | tail -18
    for run in cold warm; do
        step "start-up of streamflow run, 1 source ($run)"
        FACES_CLIP=$clip FACES_OUT=$scratch/out timeout 60 python3 -m streamflow.cli run configs/face_detect_bench.yaml \
            --max-frames 60 --stats-json "$out/startup_$run.json" 2>&1 | grep "start-up:"
    done
fi
if [ "$what" = workers-live ]; then
    step "paced 1080p30 cameras over 8 worker processes"
    FACES_CLIP=$clip FACES_OUT=$scratch/out timeout 200 python3 -m streamflow.cli bench "${many[@]}" --realtime \
        --set preprocess.batch_timeout_ms=20 --sources 64 --sources 96 --sources 128 --workers 8 \
        --frames-per-source 300 --warmup 512 --json "$out/workers_live.json" 2>&1 | grep -v "INFO" | tail -14
    step "control API at the driver, 64 sources on 8 workers"
    FACES_OUT=$scratch/out timeout 150 python3 benchmarks/control_api_workers.py --config configs/face_detect_bench.yaml \
        --workers 8 --sources 64 --seconds 6 --rounds 2 --adds 5 --json "$out/control_api_workers.json" 2>&1 |
        grep -v "INFO" | tail -12
fi

if [ "$what" = startup ]; then
    # Issue 13's start-up: first result after launch on a fresh machine (cold), again (warm), the same
    # with the onnx2torch converter, and where a warm start's import time goes. Run it first on a
    # fresh machine, or "cold" is not cold.
    startup() {  # $1: name, the rest: extra arguments
        local name=$1
        shift
        FACES_CLIP=$clip FACES_OUT=$scratch/out timeout 90 python3 -m streamflow.cli run configs/face_detect_bench.yaml \
            --max-frames 60 --stats-json "$out/startup_$name.json" "$@" 2>&1 | grep -E "start-up:|loaded in"
    }
    for run in cold warm warm2; do
        step "start-up of streamflow run, 1 source ($run, converter auto)"
        startup "$run"
    done
    step "start-up, converter onnx2torch (warm)"
    startup onnx2torch --set detect.converter=onnx2torch
    step "imports of a warm start (python -X importtime): the slowest, cumulative"
    FACES_CLIP=$clip FACES_OUT=$scratch/out timeout 90 python3 -X importtime -m streamflow.cli run \
        configs/face_detect_bench.yaml --max-frames 60 2>"$out/importtime.txt" | grep "start-up:"
    python3 - "$out/importtime.txt" <<'PY'
import sys
rows = []
for line in open(sys.argv[1]):
    parts = line.split("|")
    if line.startswith("import time:") and len(parts) == 3 and parts[1].strip().isdigit():
        name = parts[2].rstrip()
        depth = (len(name) - len(name.lstrip())) // 2
        rows.append((int(parts[1]) / 1e6, depth, name.strip()))
for took, depth, name in sorted((r for r in rows if r[1] <= 2), reverse=True)[:25]:
    print(f"{took:6.2f} s  {'  ' * depth}{name}")
PY
fi

if [ "$what" = sr-quick ]; then
    step "super-resolution: config as shipped vs the serial loop, 300-frame clip (REPEAT rounds)"
    TAIL=11 sr_bench --json "$out/sr_bench_quick.json"
fi


if [ "$what" = throughput ]; then
    # Issue 13's throughput target, REPEAT times (default 1): one process and 3 and 4 worker processes,
    # 32 and 64 unpaced sources, against raw NVDEC measured in the same call.
    for round in $(seq "${REPEAT:-1}"); do
        step "many sources, unpaced, round $round: one process and worker processes, against raw NVDEC"
        FACES_CLIP=$clip FACES_OUT=$scratch/out timeout "${THROUGHPUT_LIMIT:-200}" python3 -m streamflow.cli bench \
            "${many[@]}" --sources 32 --sources 64 --workers 1 --workers 3 --workers 4 --frames-per-source 600 \
            --warmup 4096 --raw-threads 14,21 --json "$out/throughput_$round.json" 2>&1 | grep -v "INFO" | tail -12
    done
fi
if [ "$what" = live-curve ] || [ "$what" = live-steady ]; then
    # Issue 13's live target: paced 1080p30 cameras, drops and the capture latency after the warm-up, for
    # each worker count in LIVE_WORKERS and the counts in LIVE_SOURCES. live-curve: 450 frames a source,
    # 9,000 results of warm-up, 3 and 4 workers; live-steady: 300 frames, 512 results, 8 workers.
    if [ "$what" = live-curve ]; then defaults=("3 4" 450 9000 200); else defaults=(8 300 512 280); fi
    for workers in ${LIVE_WORKERS:-${defaults[0]}}; do
        step "paced 1080p30 cameras over $workers worker processes"
        FACES_CLIP=$clip FACES_OUT=$scratch/out timeout "${LIVE_LIMIT:-${defaults[3]}}" python3 -m streamflow.cli bench \
            "${many[@]}" --realtime --set preprocess.batch_timeout_ms=20 \
            ${LIVE_SOURCES:---sources 64 --sources 96 --sources 112} --workers "$workers" \
            --frames-per-source "${defaults[1]}" --warmup "${defaults[2]}" --json "$out/${what}_$workers.json" 2>&1 |
            grep -v "INFO" | tail -9
    done
fi

if [ "$what" = live-graphs ]; then
    # Paced cameras with and without CUDA graphs at the smaller batches (a batch that goes out after
    # batch_timeout_ms replays the smallest graph that holds it, not the batch-32 one), both with the
    # workers' sources started together. One bench call per variant; same clip, same settings else.
    step "GPU tests of the inference backends"
    timeout 120 python3 -m pytest -q -rs -m gpu -p no:cacheprovider tests/inference/test_inference_gpu.py 2>&1 | tail -4
    live() {  # $1: name, $2: workers, $3: source counts (--sources N ...), the rest: extra bench arguments
        local name=$1 workers=$2 counts=$3
        shift 3
        step "paced 1080p30 cameras, $name, $workers worker(s)"
        FACES_CLIP=$clip FACES_OUT=$scratch/out timeout "${LIVE_LIMIT:-240}" python3 -m streamflow.cli bench \
            "${many[@]}" --realtime --set preprocess.batch_timeout_ms=20 $counts --workers "$workers" \
            --frames-per-source 450 --warmup 9000 --json "$out/live_${name}_$workers.json" "$@" 2>&1 |
            grep -v "INFO" | tail -12
    }
    # One bench call per count, the comparison first: a call cut short by its time limit still leaves
    # the JSON of every count before it.
    live graphs 4 "--sources 96"
    live one-graph 4 "--sources 96" --set "detect.graph_batches=[]"
    live graph16 4 "--sources 96" --set "detect.graph_batches=[16]"
    for count in ${LIVE_MORE:-112 104}; do
        live "graphs_$count" 4 "--sources $count"
    done
    for run in $(seq "${STARTUP_RUNS:-2}"); do
        step "start-up of streamflow run, 1 source, graphs at $graph_batches and 32 (run $run)"
        FACES_CLIP=$clip FACES_OUT=$scratch/out timeout 60 python3 -m streamflow.cli run "${many[@]}" \
            --max-frames 60 2>&1 | grep -E "start-up:|loaded in"
    done
    if [ "${STARTUP_RUNS:-2}" != 0 ]; then
        for graphs in "[]" "[16]"; do
            step "start-up, graph_batches $graphs (and the batch-32 graph)"
            FACES_CLIP=$clip FACES_OUT=$scratch/out timeout 60 python3 -m streamflow.cli run "${many[@]}" \
                --set "detect.graph_batches=$graphs" --max-frames 60 2>&1 | grep -E "start-up:|loaded in"
        done
    fi
    for count in ${LIVE_ONE_PROCESS:-48 64}; do
        live "graphs_$count" 1 "--sources $count"
    done
fi

if [ "$what" = final ]; then
    # After the super-resolution rounds above: all GPU tests, the face-detection benchmark and the demo.
    gpu_tests 150
    TAIL=12 face_bench
    demo
fi
step done
