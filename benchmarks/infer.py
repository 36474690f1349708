"""The `infer` stage against the raw model loop, same backend, same batch, same CUDA graph setting.

For each batch size, in one process and one run:

- raw: the backend alone, `backend.infer({input: x})` in a tight loop on one stream, one device sync
  at the end: the ceiling for this model on this GPU.
- stage: a pipeline `ListSource` (pre-made batches of preprocessed tensors) -> `infer` -> a sink
  that drops items, through the real runner (threads, queues, CUDA streams, events). The sink runs
  on the host, so the runner waits for each batch's CUDA event before the sink sees it: the time
  counts finished GPU work. Timing starts after `--warmup` batches have reached the sink.

Prints fps for both and stage/raw; `--json PATH` writes the figures. The issue's target: stage >= 0.9
x raw at batch 8 and 32.

Usage (GPU host):
    python3 benchmarks/infer.py --precision fp16 --json out/infer.json
    python3 benchmarks/infer.py --model other.onnx --input-shape 3x384x640 --batches 1,4,16
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import platform
import sys
import time
from fractions import Fraction
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing

from stages.infer import Infer  # noqa: E402  (after the path set-up above)
from streamflow.frame import Batch, Frame, PixelFormat  # noqa: E402
from streamflow.inference.base import CudaGraphMode, InputSpec, Precision  # noqa: E402
from streamflow.inference.onnx_tools import graph_inputs, load_onnx  # noqa: E402
from streamflow.inference.select import create_backend  # noqa: E402
from streamflow.pipeline import Pipeline  # noqa: E402
from streamflow.stage import Stage  # noqa: E402
from streamflow.testing import ListSource  # noqa: E402


class TimingSink(Stage):
    """Drops items; notes when the warm-up frames are through and when the last frame arrived."""

    def __init__(self, warmup_frames: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.warmup_frames = warmup_frames
        self.frames = 0
        self.frames_at_start = 0
        self.started: float | None = None
        self.ended = 0.0

    def process(self, item: Frame | Batch) -> None:
        self.frames += len(item.frames)
        now = time.perf_counter()
        if self.started is None and self.frames >= self.warmup_frames:
            self.started = now
            self.frames_at_start = self.frames
        self.ended = now
        return None


def _batches(x: torch.Tensor, count: int) -> list[Batch]:
    image = torch.empty(0)  # frames carry no pixels of their own here; the batch data is the input
    size = x.shape[0]
    return [
        Batch(
            [
                Frame(image, i * size + j, Fraction(1, 30), index=i * size + j, format=PixelFormat.TENSOR)
                for j in range(size)
            ],
            data=x,
        )
        for i in range(count)
    ]


def bench_raw(args: argparse.Namespace, spec: InputSpec, x: torch.Tensor) -> tuple[float, str]:
    backend = create_backend(
        args.model,
        {spec.name: spec},
        kind=args.backend,
        precision=args.precision,
        device=args.device,
        cuda_graph=args.cuda_graph,
        channels_last=args.channels_last,
        cudnn_benchmark=args.cudnn_benchmark,
    )
    on_gpu = x.device.type == "cuda"
    # A non-default stream, like a stage's: the same conditions the stage runs under.
    stream = torch.cuda.Stream(device=x.device) if on_gpu else None
    with torch.cuda.stream(stream) if stream is not None else contextlib.nullcontext():
        backend.load()
        for _ in range(args.warmup):
            backend.infer({spec.name: x})
        if stream is not None:
            stream.synchronize()
        started = time.perf_counter()
        for _ in range(args.iterations):
            backend.infer({spec.name: x})
        if stream is not None:
            stream.synchronize()
        elapsed = time.perf_counter() - started
    description = backend.description
    backend.close()
    return args.iterations * x.shape[0] / elapsed, description


def bench_stage(args: argparse.Namespace, spec: InputSpec, x: torch.Tensor) -> float:
    batch = x.shape[0]
    sink = TimingSink(args.warmup * batch, name="sink")
    infer = Infer(
        name="infer",
        batch_size=batch,
        model=args.model,
        input_shapes={spec.name: list(spec.shape)},
        precision=args.precision,
        backend=args.backend,
        cuda_graph=args.cuda_graph,
        channels_last=args.channels_last,
        cudnn_benchmark=args.cudnn_benchmark,
    )
    source = ListSource(_batches(x, args.warmup + args.iterations), name="source")
    Pipeline([source, infer, sink], device=args.device).run_sync()
    if sink.started is None:
        raise RuntimeError("no frame reached the sink")
    return (sink.frames - sink.frames_at_start) / (sink.ended - sink.started)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=ROOT / "models" / "centerface.onnx")
    parser.add_argument("--input-shape", default="3x480x640", help="one item's shape, CxHxW (default 3x480x640)")
    parser.add_argument("--batches", default="1,8,32", help="comma-separated batch sizes")
    parser.add_argument("--frames", type=int, default=4096, help="frames timed per measurement")
    parser.add_argument("--warmup", type=int, default=10, help="untimed batches before timing")
    parser.add_argument("--precision", choices=[p.value for p in Precision], default="fp16")
    parser.add_argument("--backend", choices=["auto", "tensorrt", "torch", "onnxruntime"], default="auto")
    parser.add_argument("--cuda-graph", choices=[m.value for m in CudaGraphMode], default="auto")
    parser.add_argument("--channels-last", action="store_true", help="torch backend: NHWC weights and inputs")
    parser.add_argument("--cudnn-benchmark", action="store_true", help="torch backend: cuDNN times its algorithms")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("CUDA is not available: run on the GPU host, or pass --device cpu --precision fp32")
    names = list(graph_inputs(load_onnx(args.model)))
    if len(names) != 1:
        parser.error(f"the model has inputs {names}; this benchmark feeds exactly one")
    item_shape = [int(d) for d in args.input_shape.lower().split("x")]
    dtype = Precision(args.precision).dtype
    results = []
    description = ""
    for batch in (int(b) for b in args.batches.split(",")):
        args.iterations = max(1, args.frames // batch)
        spec = InputSpec.static(names[0], [batch, *item_shape])
        torch.manual_seed(0)
        x = (torch.rand(batch, *item_shape) * 255).to(device=device, dtype=dtype)
        raw, description = bench_raw(args, spec, x)
        stage = bench_stage(args, spec, x)
        results.append({"batch": batch, "raw_fps": raw, "stage_fps": stage, "ratio": stage / raw})
        print(
            f"batch {batch:>3}: raw {raw:9.1f} fps   stage {stage:9.1f} fps   stage/raw {stage / raw:5.2f}", flush=True
        )

    print()
    print(f"model {args.model.name}, input {args.input_shape}, {args.precision}, backend: {description}")
    print(f"{'batch':>5} | {'raw fps':>10} | {'stage fps':>10} | {'stage/raw':>9}")
    print(f"{'-' * 5}-+-{'-' * 10}-+-{'-' * 10}-+-{'-' * 9}")
    for row in results:
        print(f"{row['batch']:>5} | {row['raw_fps']:>10.1f} | {row['stage_fps']:>10.1f} | {row['ratio']:>9.2f}")
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        meta = {
            "model": str(args.model),
            "input_shape": args.input_shape,
            "precision": args.precision,
            "backend": description,
            "cuda_graph": args.cuda_graph,
            "channels_last": args.channels_last,
            "cudnn_benchmark": args.cudnn_benchmark,
            "frames": args.frames,
            "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor(),
            "torch": torch.__version__,
            "python": platform.python_version(),
        }
        args.json.write_text(json.dumps({"meta": meta, "results": results}, indent=2))
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
