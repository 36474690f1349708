"""Make the super-resolution sample clip: a slow sub-pixel camera pan over a held-out photograph.

The photograph (scikit-image's `rocket`, public domain, never trained on) is sampled at about
its native resolution with a diagonal pan of a fraction of a pixel per frame, the motion the
model's training sequences have, and encoded as H.264 (CRF 18, BT.709 limited range):

    python tools/make_sr_clip.py                                  # samples/sr_input.mp4, 640x360, 60 frames
    python tools/make_sr_clip.py --out out/clip.mp4 --width 320 --height 180 --frames 12 --photo coffee

Example:
    >>> import tempfile, pathlib
    >>> path = make_clip(pathlib.Path(tempfile.mkdtemp()) / "c.mp4", width=64, height=48, frames=3)
    >>> path.stat().st_size > 0
    True
"""

from __future__ import annotations

import argparse
import sys
from fractions import Fraction
from pathlib import Path
from types import ModuleType

import torch

ROOT = Path(__file__).resolve().parents[1]


def _train_sr() -> ModuleType:
    # The training tool owns the sequence renderer; training/ is not a package: its folder goes on the path.
    if str(ROOT / "training") not in sys.path:
        sys.path.insert(0, str(ROOT / "training"))
    import train_sr

    return train_sr


def make_clip(
    path: str | Path, *, width: int = 640, height: int = 360, frames: int = 60, fps: int = 30, photo: str = "rocket"
) -> Path:
    """Render and encode the clip; returns its path. `photo` is a scikit-image data image name."""
    import skimage.data

    from streamflow.video.encode import VideoWriter

    train_sr = _train_sr()
    image = train_sr._to_tensor(train_sr._rgb(getattr(skimage.data, photo)()), torch.device("cpu"))
    _, ph, pw = image.shape
    # Fit the frame inside the photo with room for the pan: zoom < 1 magnifies the photo slightly.
    zoom = min(0.92 * pw / width, 0.92 * ph / height, 1.0)
    rel = torch.arange(frames, dtype=torch.float32) - (frames - 1) / 2
    travel = 0.035 * min(pw, ph) / max(frames, 1)  # the whole pan spans ~3.5 % of the photo
    shifts = torch.stack((rel * travel, rel * travel * 0.6), dim=1)
    zooms = torch.full((frames,), zoom)
    seq = train_sr.render_sequence(image, ((pw - 1) / 2, (ph - 1) / 2), (height, width), shifts, zooms)
    rgb = seq.mul(255).round_().to(torch.uint8)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with VideoWriter(path, fps=fps, codec="h264", crf=18, preset="veryfast", backend="cpu") as writer:
        for i, frame in enumerate(rgb):
            writer.write(frame, "rgb", pts=i, time_base=Fraction(1, fps))
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=str(ROOT / "samples" / "sr_input.mp4"))
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--height", type=int, default=360)
    parser.add_argument("--frames", type=int, default=60)
    parser.add_argument("--fps", type=int, default=30)
    parser.add_argument("--photo", default="rocket", help="a held-out scikit-image photo: rocket or coffee")
    args = parser.parse_args()
    path = make_clip(args.out, width=args.width, height=args.height, frames=args.frames, fps=args.fps, photo=args.photo)
    print(f"wrote {path} ({path.stat().st_size / 1e3:.0f} kB)")


if __name__ == "__main__":
    main()
