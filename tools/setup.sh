#!/usr/bin/env bash
# Idempotent set-up of a development environment in .venv (Python >= 3.11), used by both README commands.
#   STREAMFLOW_SKIP_APT=1   skip the Debian packages (RTSP tests then skip with a reason)
set -euo pipefail
cd "$(dirname "$0")/.."

python=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$python" -m venv .venv
fi
pip=(.venv/bin/python -m pip install --disable-pip-version-check -q)

# torch first and pinned: an unpinned resolver pick downloads a multi-GB CUDA build we did not test.
if ! .venv/bin/python -c "import torch, torchvision" 2>/dev/null; then
    "${pip[@]}" "torch==2.14.1" "torchvision==0.29.1"
fi
"${pip[@]}" -e ".[dev]"

# Debian packages for the live tests: a real RTSP server (gst-rtsp-server through python3-gi), and the
# redis-server and mosquitto that the redis and mqtt sink tests start.
if [ "${STREAMFLOW_SKIP_APT:-0}" != 1 ] && command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
    packages=(python3-gi gir1.2-gst-rtsp-server-1.0 gstreamer1.0-plugins-base gstreamer1.0-plugins-good
              gstreamer1.0-plugins-ugly gstreamer1.0-plugins-bad gstreamer1.0-tools ffmpeg
              redis-server mosquitto)
    if ! dpkg -s "${packages[@]}" >/dev/null 2>&1; then
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${packages[@]}" >/dev/null
    fi
fi
