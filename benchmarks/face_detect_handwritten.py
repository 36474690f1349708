"""The face-detection loop a user writes by hand on a GPU host, and a decode-only loop, on one clip.

1. `raw decode`: PyNvVideoCodec's demuxer and one NVDEC decoder, frames counted and dropped: the
   ceiling a single decoder sets.
2. `hand-written`: the same decode, then per frame NV12 -> RGB and letterbox resize in torch,
   CenterFace through onnx2torch on CUDA in fp16, CenterFace decode (threshold, NMS, mapping back),
   and `.cpu()` of the detections, which are kept: one frame finished before the next starts, all on
   the default stream, as the library samples show it.

Both loops run over the same `--frames` frames (the clip is replayed when it is shorter), after a
warm-up that is not timed (model conversion, cuDNN autotuning, first decoder session). Prints fps of
each; `--json PATH` also writes them.

Usage (GPU host, repository root, PYTHONPATH including the repo):
    python benchmarks/face_detect_handwritten.py --clip clip_1080p.mp4 --frames 600 --json out/hand.json
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from streamflow.models import centerface as cf  # noqa: E402  (after the sys.path fix-up above)
from streamflow.ops.color import nv12_to_rgb  # noqa: E402
from streamflow.ops.resize import InputDtype, InputTransform, letterbox_resize  # noqa: E402


def _nvc() -> Any:
    """PyNvVideoCodec, imported only here: importing it raises on machines without the NVIDIA driver."""
    import PyNvVideoCodec as nvc

    return nvc


def _as_nv12(frame: Any) -> torch.Tensor:
    """A decoded frame as a (H*3//2, W) uint8 CUDA view (valid until the next Decode call)."""
    view = torch.from_dlpack(frame)
    return view[..., 0] if view.dim() == 3 and view.shape[-1] == 1 else view


def decoded_frames(clip: Path, count: int, gpu: int = 0) -> Iterator[Any]:
    """Decoder frames from `clip` with the library's own demuxer, replaying it until `count` frames."""
    nvc = _nvc()
    produced = 0
    while produced < count:
        demuxer = nvc.CreateDemuxer(filename=str(clip))
        decoder = nvc.CreateDecoder(
            gpuid=gpu, codec=demuxer.GetNvCodecId(), cudacontext=0, cudastream=0, usedevicememory=True
        )
        before = produced
        for packet in demuxer:
            for frame in decoder.Decode(packet):
                yield frame
                produced += 1
                if produced >= count:
                    return
        if produced == before:
            raise RuntimeError(f"{clip}: no frame decoded")


def raw_decode(clip: Path, count: int) -> tuple[int, float]:
    """Decode only; returns (frames, seconds)."""
    frames = 0
    start = time.perf_counter()
    for _ in decoded_frames(clip, count):
        frames += 1
    torch.cuda.synchronize()
    return frames, time.perf_counter() - start


def load_model(height: int, width: int) -> torch.nn.Module:
    import onnx
    import onnx2torch

    path = cf.reshape_model(height, width, batch=1)
    return onnx2torch.convert(onnx.load(str(path))).eval().cuda().half()


#: The benchmark config's preprocessing (letterbox, no normalisation), fp16 as the model runs.
FP16_INPUT = InputTransform(dtype=InputDtype.FP16)


def handwritten(
    clip: Path, count: int, model: torch.nn.Module, size: tuple[int, int], threshold: float
) -> tuple[int, float, list[dict[str, Any]]]:
    """Decode, preprocess, infer, postprocess and copy out, one frame at a time."""
    detections: list[dict[str, Any]] = []
    start = time.perf_counter()
    with torch.inference_mode():
        for index, frame in enumerate(decoded_frames(clip, count)):
            rgb = nv12_to_rgb(_as_nv12(frame))
            x, lb = letterbox_resize(rgb, size, FP16_INPUT)
            heatmap, scale, offset, landmarks = model(x)
            (faces,) = cf.decode(heatmap, scale, offset, landmarks, threshold=threshold, transforms=[lb])
            detections.append(
                {
                    "index": index,
                    "boxes": faces.boxes.cpu(),
                    "scores": faces.scores.cpu(),
                    "landmarks": faces.landmarks.cpu(),
                }
            )
    torch.cuda.synchronize()
    return len(detections), time.perf_counter() - start, detections


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="hand-written GPU face detection loop vs raw decode")
    parser.add_argument("--clip", type=Path, default=ROOT / "samples" / "faces.mp4")
    parser.add_argument("--frames", type=int, default=600, help="frames per loop (the clip is replayed)")
    parser.add_argument("--warmup", type=int, default=30, help="untimed frames through each loop first")
    parser.add_argument("--height", type=int, default=384, help="model input height (multiple of 32)")
    parser.add_argument("--width", type=int, default=640, help="model input width (multiple of 32)")
    parser.add_argument("--threshold", type=float, default=0.5)
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("this benchmark needs a CUDA GPU (torch.cuda.is_available() is False)", file=sys.stderr)
        return 2
    if not args.clip.is_file():
        print(f"clip not found: {args.clip}", file=sys.stderr)
        return 2

    size = (args.height, args.width)
    model = load_model(*size)
    raw_decode(args.clip, args.warmup)
    handwritten(args.clip, args.warmup, model, size, args.threshold)

    raw_frames, raw_s = raw_decode(args.clip, args.frames)
    hand_frames, hand_s, detections = handwritten(args.clip, args.frames, model, size, args.threshold)
    faces = sum(int(d["boxes"].shape[0]) for d in detections)
    result = {
        "clip": str(args.clip),
        "frames": args.frames,
        "model_input": [1, 3, *size],
        "precision": "fp16",
        "raw_decode_fps": raw_frames / raw_s,
        "handwritten_fps": hand_frames / hand_s,
        "handwritten_over_raw": (hand_frames / hand_s) / (raw_frames / raw_s),
        "faces_detected": faces,
        "gpu": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }
    print(f"clip {args.clip} ({args.frames} frames) on {result['gpu']}")
    print(f"raw decode (1 NVDEC decoder):            {result['raw_decode_fps']:8.1f} fps")
    print(f"hand-written loop (fp16, .cpu() a frame): {result['handwritten_fps']:8.1f} fps  ({faces} faces)")
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
