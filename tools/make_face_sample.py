"""Build the face-detection sample clip and its ground truth from photographs that scikit-image ships.

Three copies of the face in scikit-image's `astronaut` photograph (Eileen Collins, NASA, public
domain) move and change size over other shipped photographs (`coffee`, `rocket`, `hubble_deep_field`,
`stereo_motorcycle`), one background per second. The clip is 1280x720, 30 fps, 4 s, H.264
(yuv420p, BT.709 limited range) written with PyAV, and the true face boxes of every frame go to a
JSON file beside it.

The true box of a copy is a fixed face box in the source photograph, scaled and moved with the copy.
That box (`FACE_BOX`) is what CenterFace itself finds on the untouched 512x512 photograph, so IoU
against it measures the pipeline (resize, letterbox, decode, mapping back) rather than a disagreement
between two annotators about where a face ends.

Usage:
    python tools/make_face_sample.py [--out samples/faces.mp4] [--frames 120] [--crf 27] [--scale 1.5]

`--scale 1.5` makes the same scene at 1920x1080 (for benchmarks; the shipped sample is 1280x720).

The JSON (`faces_boxes.json` beside `faces.mp4`) looks like:
    {"width": 1280, "height": 720, "fps": 30, "frames": [{"index": 0, "boxes": [[x1, y1, x2, y2], ...]}, ...]}
"""

from __future__ import annotations

import argparse
import json
import math
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import torch
import torch.nn.functional as F
from skimage import data

__all__ = ["CROP", "FACE_BOX", "Track", "boxes_at", "main", "make_sample"]

WIDTH, HEIGHT, FPS = 1280, 720, 30
#: The face in `skimage.data.astronaut()` (512x512), x1, y1, x2, y2: CenterFace's box on the
#: untouched photo at its native size (score 0.93), rounded to whole pixels.
FACE_BOX = (182.0, 58.0, 270.0, 178.0)
#: The part of the photo that is pasted: the head with some margin (hair, collar, flag edge).
CROP = (130, 10, 330, 240)
#: Backgrounds, one per second, in order; none of them contains a face.
BACKGROUNDS = ("coffee", "rocket", "hubble_deep_field", "stereo_motorcycle")


@dataclass(frozen=True, slots=True)
class Track:
    """One pasted face: centre path and face height over time (t in 0..1 across the clip)."""

    cx: tuple[float, float, float]  # centre x: base, amplitude, phase (radians)
    cy: tuple[float, float, float]
    face_h: tuple[float, float]  # face height in pixels: from, to (cosine ease there and back)
    mirror: bool = False

    def at(self, t: float) -> tuple[float, float, float]:
        """Centre x, centre y and face height at time t."""
        angle = 2 * math.pi * t
        x = self.cx[0] + self.cx[1] * math.sin(angle + self.cx[2])
        y = self.cy[0] + self.cy[1] * math.sin(angle + self.cy[2])
        lo, hi = self.face_h
        h = lo + (hi - lo) * (1 - math.cos(angle)) / 2
        return x, y, h


#: Three lanes (left, middle, right) so that the pasted crops never overlap.
TRACKS = (
    Track(cx=(230.0, 60.0, 0.0), cy=(360.0, 140.0, 0.5), face_h=(60.0, 150.0)),
    Track(cx=(640.0, 70.0, 1.0), cy=(330.0, 170.0, 2.0), face_h=(110.0, 56.0), mirror=True),
    Track(cx=(1050.0, 50.0, 2.5), cy=(380.0, 120.0, 4.0), face_h=(80.0, 120.0)),
)


def _rgb(name: str) -> torch.Tensor:
    """A shipped photograph as uint8 (3, H, W)."""
    img = getattr(data, name)()
    if isinstance(img, tuple):  # stereo pairs: take the left view
        img = img[0]
    arr = np.asarray(img)
    if arr.ndim == 2:
        arr = np.stack([arr] * 3, axis=-1)
    return torch.from_numpy(np.ascontiguousarray(arr[..., :3])).permute(2, 0, 1).contiguous()


def _resize(img: torch.Tensor, h: int, w: int) -> torch.Tensor:
    out = F.interpolate(img[None].float(), size=(h, w), mode="bilinear", antialias=True, align_corners=False)
    return out[0].round().clamp(0, 255).to(torch.uint8)


def _background(name: str, width: int, height: int) -> torch.Tensor:
    """Cover-crop a photograph to 16:9 and scale it to the frame size."""
    img = _rgb(name)
    _, h, w = img.shape
    if w / h > WIDTH / HEIGHT:
        cw = round(h * WIDTH / HEIGHT)
        img = img[:, :, (w - cw) // 2 : (w - cw) // 2 + cw]
    else:
        ch = round(w * HEIGHT / WIDTH)
        img = img[:, (h - ch) // 2 : (h - ch) // 2 + ch]
    return _resize(img, height, width)


Placement = tuple[tuple[int, int, int, int], tuple[float, float, float, float], bool]


def boxes_at(t: float, scale: float = 1.0) -> list[Placement]:
    """Per track at time t: the pasted crop's integer rectangle (x1, y1, x2, y2), the true face box, mirror.

    `scale` scales the whole 1280x720 scene (positions and sizes).
    """
    cx1, cy1, cx2, cy2 = CROP
    fx1, fy1, fx2, fy2 = FACE_BOX
    out = []
    for track in TRACKS:
        x, y, face_h = (v * scale for v in track.at(t))
        s = face_h / (fy2 - fy1)
        w, h = round((cx2 - cx1) * s), round((cy2 - cy1) * s)
        # The face centre follows the track; the crop is placed around it.
        fcx, fcy = ((fx1 + fx2) / 2 - cx1) * s, ((fy1 + fy2) / 2 - cy1) * s
        if track.mirror:
            fcx = w - fcx
        px, py = round(x - fcx), round(y - fcy)
        sx, sy = w / (cx2 - cx1), h / (cy2 - cy1)  # the exact scale of the integer-sized copy
        bx1, bx2 = (fx1 - cx1) * sx, (fx2 - cx1) * sx
        if track.mirror:
            bx1, bx2 = w - bx2, w - bx1
        box = (px + bx1, py + (fy1 - cy1) * sy, px + bx2, py + (fy2 - cy1) * sy)
        out.append(((px, py, px + w, py + h), box, track.mirror))
    return out


def _check_layout(frames: int, width: int, height: int, scale: float) -> None:
    """Every crop inside the frame, crops pairwise disjoint, every face at least 40 px high."""
    for i in range(frames):
        placed = boxes_at(i / frames, scale)
        for (x1, y1, x2, y2), box, _ in placed:
            if x1 < 0 or y1 < 0 or x2 > width or y2 > height:
                raise ValueError(f"frame {i}: crop {(x1, y1, x2, y2)} leaves the {width}x{height} frame")
            if box[3] - box[1] < 40:
                raise ValueError(f"frame {i}: face {box} is under 40 px high")
        rects = [p[0] for p in placed]
        for a in range(len(rects)):
            for b in range(a + 1, len(rects)):
                ra, rb = rects[a], rects[b]
                if ra[0] < rb[2] and rb[0] < ra[2] and ra[1] < rb[3] and rb[1] < ra[3]:
                    raise ValueError(f"frame {i}: crops {ra} and {rb} overlap")


def make_sample(out: Path, *, frames: int = 4 * FPS, crf: int = 27, scale: float = 1.0) -> tuple[Path, Path]:
    """Write the clip and its ground truth; return (clip path, JSON path)."""
    # Even sizes: 4:2:0 video needs them.
    width, height = 2 * round(WIDTH * scale / 2), 2 * round(HEIGHT * scale / 2)
    _check_layout(frames, width, height, scale)
    face = _rgb("astronaut")[:, CROP[1] : CROP[3], CROP[0] : CROP[2]]
    backgrounds = [_background(name, width, height) for name in BACKGROUNDS]
    out.parent.mkdir(parents=True, exist_ok=True)
    truth = []
    with av.open(str(out), "w") as container:
        stream = container.add_stream("libx264", rate=FPS)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"crf": str(crf), "preset": "medium"}
        # Tag BT.709 limited range, the matrix the frames are converted with below.
        cc = stream.codec_context
        cc.colorspace, cc.color_primaries, cc.color_trc, cc.color_range = 1, 1, 1, 1
        stream.time_base = Fraction(1, FPS)
        for i in range(frames):
            t = i / frames
            canvas = backgrounds[min(i * len(backgrounds) // frames, len(backgrounds) - 1)].clone()
            boxes = []
            for (x1, y1, x2, y2), box, mirror in boxes_at(t, scale):
                copy = _resize(face, y2 - y1, x2 - x1)
                canvas[:, y1:y2, x1:x2] = copy.flip(2) if mirror else copy
                boxes.append([round(v, 2) for v in box])
            truth.append({"index": i, "boxes": boxes})
            frame = av.VideoFrame.from_ndarray(canvas.permute(1, 2, 0).contiguous().numpy(), format="rgb24")
            frame = frame.reformat(format="yuv420p", dst_colorspace="ITU709", dst_color_range="MPEG")
            frame.pts = i
            frame.time_base = Fraction(1, FPS)
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    boxes_path = out.with_name(f"{out.stem}_boxes.json")
    meta = {
        "width": width,
        "height": height,
        "fps": FPS,
        "source": "tools/make_face_sample.py (scikit-image astronaut face over scikit-image photographs)",
        "face_box_in_astronaut": list(FACE_BOX),
        "frames": truth,
    }
    boxes_path.write_text(json.dumps(meta, separators=(",", ":")) + "\n")
    return out, boxes_path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("samples/faces.mp4"))
    parser.add_argument("--frames", type=int, default=4 * FPS)
    parser.add_argument("--crf", type=int, default=27, help="x264 quality (lower = better, bigger)")
    parser.add_argument("--scale", type=float, default=1.0, help="scene scale: 1.5 gives 1920x1080")
    args = parser.parse_args(argv)
    clip, boxes = make_sample(args.out, frames=args.frames, crf=args.crf, scale=args.scale)
    print(f"wrote {clip} ({clip.stat().st_size / 1e6:.2f} MB) and {boxes}")


if __name__ == "__main__":
    main()
