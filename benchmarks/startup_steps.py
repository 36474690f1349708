"""Where a GPU face-detection start-up goes, step by step, in one fresh process (issue 13's start-up).

Steps, in order: `import torch`; the other imports of `streamflow run` (PyAV, PyNvVideoCodec,
pydantic, the CLI); the CUDA context and a first small fp16 convolution (cuDNN's start), either
inline or (`early`) in a thread started right after `import torch`; the CenterFace `infer` stage's
setup (model read, conversion, its first forward passes and CUDA graph capture at batch 8, NHWC);
then CenterFace's box decoding twice on a batch of 8 (the first launch loads its kernels).

Usage (GPU host; run it more than once, the first run of a machine reads everything from disk):
    python3 benchmarks/startup_steps.py inline
    python3 benchmarks/startup_steps.py early
"""

from __future__ import annotations

import sys
import threading
import time
from pathlib import Path

launched = time.perf_counter()
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing
mode = sys.argv[1] if len(sys.argv) > 1 else "inline"
if mode not in ("inline", "early"):
    raise SystemExit("usage: startup_steps.py [inline|early]")

import torch  # noqa: E402  (timed: the first step)

steps: list[tuple[str, float]] = [("import torch", time.perf_counter() - launched)]
cuda_start: dict[str, float] = {}


def step(name: str, since: float) -> float:
    now = time.perf_counter()
    steps.append((name, now - since))
    return now


def start_cuda() -> None:
    began = time.perf_counter()
    torch.zeros(1, device="cuda")
    torch.cuda.synchronize()
    cuda_start["context"] = time.perf_counter() - began
    began = time.perf_counter()
    conv = torch.nn.Conv2d(3, 8, 3).cuda().half()
    image = torch.zeros(1, 3, 16, 16, device="cuda", dtype=torch.half)
    with torch.no_grad():
        conv(image)
        conv.to(memory_format=torch.channels_last)(image.contiguous(memory_format=torch.channels_last))
    torch.cuda.synchronize()
    cuda_start["first convolution"] = time.perf_counter() - began


thread = threading.Thread(target=start_cuda) if mode == "early" else None
if thread is not None:
    thread.start()
now = time.perf_counter()
import av  # noqa: E402, F401
import pydantic  # noqa: E402, F401
import PyNvVideoCodec  # noqa: E402, F401

import streamflow.cli.app  # noqa: E402, F401

now = step("other imports", now)
if thread is not None:
    thread.join()
    now = step("waiting for the CUDA thread", now)
else:
    start_cuda()
    now = step("CUDA context and first convolution", now)

from stages.infer import Infer  # noqa: E402
from streamflow.models.centerface import decode  # noqa: E402

detect = Infer(
    name="detect",
    model="models/centerface.onnx",
    input_shapes={"input.1": [8, 3, 384, 640]},
    precision="fp16",
    channels_last=True,
)
detect.device = torch.device("cuda")  # what the runner's placement does
now = time.perf_counter()
detect.setup()
now = step("detect setup", now)

heatmap = torch.zeros(8, 1, 96, 160, device="cuda", dtype=torch.half)
heatmap[:, :, 10, 10] = 0.9
pair = torch.zeros(8, 2, 96, 160, device="cuda", dtype=torch.half)
landmarks = torch.zeros(8, 10, 96, 160, device="cuda", dtype=torch.half)
for run in ("first", "second"):
    now = time.perf_counter()
    decode(heatmap, pair, pair, landmarks)
    torch.cuda.synchronize()
    step(f"{run} CenterFace decode", now)

print(
    f"{mode}: total {time.perf_counter() - launched:.2f} s | "
    + ", ".join(f"{name} {seconds:.2f}" for name, seconds in steps)
    + " | CUDA start: "
    + ", ".join(f"{name} {seconds:.2f}" for name, seconds in cuda_start.items())
)
