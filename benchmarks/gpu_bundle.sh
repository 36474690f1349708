#!/usr/bin/env bash
# For a GPU machine without package access: pack the Python packages it lacks (PyNvVideoCodec, PyAV,
# pydantic, onnx2torch, pytest-asyncio) for CPython 3.12 into one compressed tree, .gpu/site.tar.xz
# (~32 MB), small enough to travel with the working tree, plus this project's wheel. Run it on a machine
# with PyPI access; on the GPU machine, benchmarks/gpu_session.sh unpacks and uses both.
set -euo pipefail
cd "$(dirname "$0")/.."
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
python3 -m pip download -q --only-binary=:all: --no-deps --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d "$work/wheels" pynvvideocodec av onnx2torch pydantic pydantic-core annotated-types typing-inspection \
    pytest-asyncio orjson redis paho-mqtt aiohttp aiohappyeyeballs aiosignal frozenlist multidict propcache yarl \
    prometheus-client
mkdir -p "$work/gpusite" .gpu
for wheel in "$work"/wheels/*.whl; do
    unzip -q -o "$wheel" -d "$work/gpusite"
done
# Sources, notebooks and sample scripts the wheels carry are not needed to run.
rm -rf "$work"/gpusite/pynvvideocodec-*.data/data/external "$work/gpusite/samples" "$work/gpusite/benchmarks"
tar -cJf .gpu/site.tar.xz -C "$work" gpusite
# The project's own wheel: its metadata carries the stage entry points (see benchmarks/gpu_session.sh).
rm -f .gpu/streamflow-*.whl
python3 -m pip wheel -q --no-deps -w .gpu .
du -h .gpu/*
