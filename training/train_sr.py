"""Train, evaluate and export the x2 video super-resolution model (`streamflow.models.vsr.VSRNet`).

Data: photographs that PyPI packages ship (scikit-image's data images; scikit-learn's sample
images and matplotlib's sample data when those packages are installed). Each photograph becomes
short video sequences by sub-pixel camera motion (a random pan with per-frame jitter and a slight
zoom drift, resampled bicubically), and each high-resolution frame is degraded into the
low-resolution input by a realistic capture kernel (Gaussian blur, then area or antialiased
bicubic x2 downscale, a little sensor noise, 8-bit quantisation). Some photographs are held out
and never trained on; the evaluation reports PSNR on the Y channel of the model's x2 output and
of bicubic upscaling for a fixed sequence made from each of them.

Subcommands (run from the repository root):

    python training/train_sr.py data --out .gpudata_sr              # extract the photographs (.npz + manifest)
    python training/train_sr.py train --data .gpudata_sr --steps 20000 --max-seconds 240 --device cuda \\
        --checkpoint out/vsr_x2.pt --eval-json out/vsr_eval.json --eval-md out/vsr_eval.md
    python training/train_sr.py evaluate --checkpoint out/vsr_x2.pt --data .gpudata_sr
    python training/train_sr.py export --checkpoint out/vsr_x2.pt --onnx models/vsr_x2.onnx --data .gpudata_sr
    python training/train_sr.py export-stacked --from-onnx models/vsr_x2.onnx --onnx models/vsr_x2_7in3out_nhwc.onnx
    python training/train_sr.py evaluate --stacked-onnx models/vsr_x2_7in3out_nhwc.onnx --eval-frames 9

Without `--data` the photographs are read from the installed packages directly. Seeds are fixed;
a run is bit-for-bit repeatable on one device unless `--max-seconds` stops it early.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F


def _load_vsr_module() -> ModuleType:
    """`streamflow/models/vsr.py`, loaded by path: importing the `streamflow` package pulls in the
    pipeline core (pydantic, ...), which a bare training host does not have; the model needs only torch."""
    path = Path(__file__).resolve().parents[1] / "streamflow" / "models" / "vsr.py"
    spec = importlib.util.spec_from_file_location("_streamflow_models_vsr", path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


if TYPE_CHECKING:
    from streamflow.models.vsr import (
        StackedWindows,
        VSRNet,
        export_onnx,
        export_stacked_onnx,
        from_onnx_weights,
        load_checkpoint,
        stack_window,
    )
else:
    _vsr = _load_vsr_module()
    StackedWindows = _vsr.StackedWindows
    VSRNet = _vsr.VSRNet
    export_onnx = _vsr.export_onnx
    export_stacked_onnx = _vsr.export_stacked_onnx
    from_onnx_weights = _vsr.from_onnx_weights
    load_checkpoint = _vsr.load_checkpoint
    stack_window = _vsr.stack_window

log = logging.getLogger("train_sr")

SCALE = 2
#: Photographs never trained on; evaluation uses exactly these.
HELD_OUT = ("coffee", "rocket", "china", "flower", "grace_hopper")


@dataclass(slots=True)
class Photo:
    """One photograph: uint8 RGB `(H, W, 3)` and where it came from."""

    name: str
    package: str
    licence: str
    image: np.ndarray

    @property
    def held_out(self) -> bool:
        return self.name in HELD_OUT


# --------------------------------------------------------------------------------------------- data
_SKIMAGE_PHOTOS: dict[str, str] = {
    # name -> licence as the package's docstring states it
    "astronaut": "NASA Great Images database; no known copyright restrictions",
    "chelsea": "CC0 by the photographer (Stefan van der Walt)",
    "coffee": "CC0 by the photographer (Rachel Michetti)",
    "rocket": "SpaceX photo, released into the public domain",
    "hubble_deep_field": "NASA/HubbleSite, may be freely used in the public domain",
    "immunohistochemistry": "CMMI; no known copyright restrictions",
    "retina": "Wikimedia, CC0 1.0 (Mikael Haggstrom)",
    "camera": "CC0 by the photographer (Lav Varshney)",
    "brick": "CC0Textures, CC0",
    "grass": "DeviantArt (linolafett), CC0",
    "gravel": "CC0Textures, CC0",
    "coins": "Brooklyn Museum collection; no known copyright restrictions",
    "text": "Wikipedia, released into the public domain",
}


def _rgb(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.dtype != np.uint8:
        raise ValueError(f"expected uint8 image, got {image.dtype}")
    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=2)
    return np.ascontiguousarray(image[:, :, :3])


def collect_photos() -> list[Photo]:
    """Photographs from the installed packages. scikit-image is required; the others are optional."""
    import skimage.data

    photos = [Photo(n, "scikit-image", lic, _rgb(getattr(skimage.data, n)())) for n, lic in _SKIMAGE_PHOTOS.items()]
    left, right, _ = skimage.data.stereo_motorcycle()
    middlebury = "Middlebury stereo 2014 (Scharstein et al.), shipped by scikit-image"
    photos += [
        Photo("motorcycle_left", "scikit-image", middlebury, _rgb(left)),
        Photo("motorcycle_right", "scikit-image", middlebury, _rgb(right)),
    ]
    try:
        from sklearn.datasets import load_sample_image
    except ImportError:
        log.warning("scikit-learn not installed: its sample images china.jpg and flower.jpg are not used")
    else:
        cc_by = "CC BY 2.0, {} (Flickr)"
        photos.append(Photo("china", "scikit-learn", cc_by.format("danielbuechele"), load_sample_image("china.jpg")))
        photos.append(Photo("flower", "scikit-learn", cc_by.format("vultilion"), load_sample_image("flower.jpg")))
    try:
        from matplotlib import cbook
        from matplotlib.image import imread
    except ImportError:
        log.warning("matplotlib not installed: its sample image grace_hopper.jpg is not used")
    else:
        hopper = imread(str(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)))
        photos.append(Photo("grace_hopper", "matplotlib", "matplotlib sample_data (states no licence)", _rgb(hopper)))
    return photos


def save_photos(photos: Sequence[Photo], out: Path) -> None:
    """Write each photograph as a compressed .npz plus `manifest.json`, for hosts without the packages."""
    out.mkdir(parents=True, exist_ok=True)
    manifest = []
    for p in photos:
        np.savez_compressed(out / f"{p.name}.npz", image=p.image)
        manifest.append({"name": p.name, "package": p.package, "licence": p.licence, "shape": list(p.image.shape)})
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")


def load_photos(data: Path | None) -> list[Photo]:
    """Photographs from a folder written by `save_photos`, or from the packages when `data` is None."""
    if data is None:
        return collect_photos()
    manifest = json.loads((data / "manifest.json").read_text())
    return [Photo(m["name"], m["package"], m["licence"], np.load(data / f"{m['name']}.npz")["image"]) for m in manifest]


def _to_tensor(image: np.ndarray, device: torch.device) -> torch.Tensor:
    return torch.from_numpy(np.array(image)).permute(2, 0, 1).to(device, torch.float32).div_(255.0)


# ------------------------------------------------------------------------------ sequence synthesis
def render_sequence(
    photo: torch.Tensor, centre: tuple[float, float], size: tuple[int, int], shifts: torch.Tensor, zooms: torch.Tensor
) -> torch.Tensor:
    """Frames `(T, 3, h, w)` of a camera looking at `photo` `(3, H, W)`.

    Frame k samples the photo around `centre` (x, y in pixels) moved by `shifts[k]` (x, y) with
    magnification `1 / zooms[k]` (zoom > 1 sees more of the photo). Bicubic resampling gives true
    sub-pixel motion, which is what lets a multi-frame model recover detail. A batch of photos
    `(B, 3, H, W)` gives `B * T / B` frames per photo, in order (T must be a multiple of B).
    """
    photos = photo.unsqueeze(0) if photo.dim() == 3 else photo
    height, width = photos.shape[-2:]
    h, w = size
    dev = photos.device
    ys = torch.arange(h, device=dev, dtype=torch.float32) - (h - 1) / 2
    xs = torch.arange(w, device=dev, dtype=torch.float32) - (w - 1) / 2
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")
    z = zooms.to(dev).view(-1, 1, 1)
    sh = shifts.to(dev)
    src_x = centre[0] + sh[:, 0].view(-1, 1, 1) + z * gx
    src_y = centre[1] + sh[:, 1].view(-1, 1, 1) + z * gy
    # grid_sample, align_corners=False: pixel i's centre sits at (2i + 1) / size - 1.
    grid = torch.stack(((2 * src_x + 1) / width - 1, (2 * src_y + 1) / height - 1), dim=-1)
    per_photo = len(z) // len(photos)
    source = photos.repeat_interleave(per_photo, dim=0)
    frames = F.grid_sample(source, grid, mode="bicubic", padding_mode="reflection", align_corners=False)
    return frames.clamp_(0.0, 1.0)


def gaussian_blur(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Per-sample separable Gaussian blur of `x` (N, C, H, W); `sigma` (N,) in pixels, 0 = none."""
    n, c, h, w = x.shape
    radius = 3
    offsets = torch.arange(-radius, radius + 1, device=x.device, dtype=x.dtype)
    s = sigma.to(x.device, x.dtype).clamp_min(1e-3).view(n, 1)
    kernel = torch.exp(-0.5 * (offsets.view(1, -1) / s) ** 2)
    kernel = kernel / kernel.sum(dim=1, keepdim=True)  # (N, K); sigma ~0 -> a delta
    k = kernel.repeat_interleave(c, dim=0)  # one kernel per (sample, channel) for a grouped conv
    flat = F.pad(x.reshape(1, n * c, h, w), (radius, radius, radius, radius), mode="replicate")
    flat = F.conv2d(flat, k.view(n * c, 1, 1, -1), groups=n * c)
    flat = F.conv2d(flat, k.view(n * c, 1, -1, 1), groups=n * c)
    return flat.view(n, c, h, w)


def degrade(
    hr: torch.Tensor, sigma: torch.Tensor, use_area: torch.Tensor, noise: torch.Tensor, gen: torch.Generator
) -> torch.Tensor:
    """Low-resolution frames from HR `(N, 3, H, W)`: blur, x2 downscale, noise, 8-bit quantisation.

    `sigma`, `use_area` (bool) and `noise` (std in [0, 1] units) are per sample. Area (2x2 mean)
    models a sensor binning pixels; antialiased bicubic models a software scaler.
    """
    blurred = gaussian_blur(hr, sigma)
    h, w = hr.shape[-2] // SCALE, hr.shape[-1] // SCALE
    area = F.avg_pool2d(blurred, SCALE)
    cubic = F.interpolate(blurred, size=(h, w), mode="bicubic", align_corners=False, antialias=True)
    lr = torch.where(use_area.to(hr.device).view(-1, 1, 1, 1), area, cubic)
    eps = torch.randn(lr.shape, generator=gen).to(lr.device)
    lr = lr + eps * noise.to(lr.device).view(-1, 1, 1, 1)
    return lr.clamp_(0.0, 1.0).mul_(255.0).round_().div_(255.0)


def render_clips(
    photos: Sequence[torch.Tensor],
    batch: int,
    frames: int,
    hr_size: int,
    gen: torch.Generator,
    *,
    colour: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Random camera sequences `(B, frames, 3, hr_size, hr_size)` over the photographs, and the
    uniform numbers `(B, 12)` that chose them (columns 9-11 are left for the caller's degradation).
    `colour` recolours each sequence at random (`_recolour`).

    All random numbers come from the CPU generator `gen`, so the clips are the same on any device.
    The work is batched (one crop per sample, then one resampling call for the whole batch):
    per-sample kernel launches would make the GPU wait on Python.
    """
    device = photos[0].device
    centre_idx = (frames - 1) // 2
    rel = torch.arange(frames, dtype=torch.float32) - centre_idx
    # sqrt of the area: big photographs get more crops, but do not drown the small ones
    areas = torch.tensor([float(p.shape[1] * p.shape[2]) ** 0.5 for p in photos])
    picks = torch.multinomial(areas, batch, replacement=True, generator=gen)
    u = torch.rand(batch, 12, generator=gen)
    jitter = torch.randn(batch, frames, 2, generator=gen) * 0.35
    zoom = 0.75 + 0.5 * u[:, 0]  # content seen at 0.75x..1.25x the photo's resolution
    velocity = (u[:, 1:3] * 2 - 1) * 2.5  # HR pixels per frame
    shifts = rel.view(1, -1, 1) * velocity.view(-1, 1, 2) + jitter
    shifts[:, centre_idx] = 0.0
    zooms = zoom.view(-1, 1) * (1 + (u[:, 3:4] * 2 - 1) * 0.01 * rel.view(1, -1))  # (B, T): a slight zoom drift
    # Every sample's frames fit in a crop of side `crop` around its centre.
    reach = (hr_size / 2 + 2) * 1.25 * 1.02 + float(rel.abs().max() * 2.5 + 4 * 0.35 * 1.5) + 3
    crop = math.ceil(2 * reach) + 2
    crops = []
    for b in range(batch):
        photo = photos[int(picks[b])]
        _, height, width = photo.shape
        if height < crop or width < crop:
            photo = F.pad(photo.unsqueeze(0), (0, max(crop - width, 0), 0, max(crop - height, 0)), mode="reflect")[0]
            _, height, width = photo.shape
        y0 = int(float(u[b, 5]) * (height - crop))
        x0 = int(float(u[b, 4]) * (width - crop))
        crops.append(photo[:, y0 : y0 + crop, x0 : x0 + crop])
    stacked = torch.stack(crops)  # (B, 3, crop, crop)
    centre = ((crop - 1) / 2, (crop - 1) / 2)
    seq = render_sequence(stacked, centre, (hr_size, hr_size), shifts.view(-1, 2), zooms.view(-1))
    seq = seq.view(batch, frames, 3, hr_size, hr_size)
    seq = flip_sequences(seq, (u[:, 6:9] < 0.5).to(device))
    if colour:
        seq = _recolour(seq, torch.rand(batch, 2, generator=gen).to(device))
    return seq, u


#: The six orders of the RGB channels, for `_recolour`.
_CHANNEL_ORDERS = torch.tensor([[0, 1, 2], [0, 2, 1], [1, 0, 2], [1, 2, 0], [2, 0, 1], [2, 1, 0]])


def _recolour(seq: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """A random channel order and saturation (0.5-1.5x around the pixel's grey) per sequence.

    The photographs are few and their hues narrow (no blue sky among the training ones); once
    4:2:0 and the codec have damaged the input's colour, a network trained on them learns those
    hues as a prior and paints them onto other pictures. Shuffling the channels leaves it none.
    """
    order = _CHANNEL_ORDERS.to(seq.device)[(u[:, 0] * 6).long().clamp_(max=5)]  # (B, 3)
    index = order.view(-1, 1, 3, 1, 1).expand(-1, seq.shape[1], 3, seq.shape[3], seq.shape[4])
    seq = torch.gather(seq, 2, index)
    grey = seq.mean(dim=2, keepdim=True)
    saturation = (0.5 + u[:, 1]).view(-1, 1, 1, 1, 1)
    return (grey + saturation * (seq - grey)).clamp_(0.0, 1.0)


def flip_sequences(seq: torch.Tensor, flips: torch.Tensor) -> torch.Tensor:
    """Sequences `(B, T, 3, H, W)` flipped horizontally, vertically and transposed where the
    booleans `flips` `(B, 3)` say, in that order (square frames, so the transpose keeps the shape)."""
    f = flips.view(-1, 3, 1, 1, 1, 1)
    seq = torch.where(f[:, 0], seq.flip(-1), seq)
    seq = torch.where(f[:, 1], seq.flip(-2), seq)
    return torch.where(f[:, 2], seq.transpose(-1, -2), seq)


def degrade_clips(seq: torch.Tensor, u: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Low-resolution frames `(B, T, 3, h, w)` of `render_clips`' sequences, one camera per
    sequence (the same kernel and noise level for all its frames), drawn from `u`'s columns 9-11."""
    batch, frames, _, hr_h, hr_w = seq.shape
    sigma = (u[:, 9] * 1.1).repeat_interleave(frames)
    use_area = (u[:, 10] < 0.5).repeat_interleave(frames)
    noise = (u[:, 11] * 2.0 / 255.0).repeat_interleave(frames)
    lr = degrade(seq.reshape(-1, 3, hr_h, hr_w), sigma, use_area, noise, gen)
    return lr.view(batch, frames, 3, hr_h // SCALE, hr_w // SCALE)


def make_batch(
    photos: Sequence[torch.Tensor], batch: int, window: int, patch: int, gen: torch.Generator, *, colour: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """A random training batch of uncompressed 8-bit input: input `(B, 3 * window, patch, patch)`,
    target `(B, 3, 2 patch, 2 patch)` (the centre HR frame)."""
    seq, u = render_clips(photos, batch, window, patch * SCALE, gen, colour=colour)
    lr = degrade_clips(seq, u, gen)
    return lr.reshape(batch, 3 * window, patch, patch), seq[:, (window - 1) // 2].contiguous()


# ------------------------------------------------------------------------- codec degradations
#: x264/x265 presets a training clip may be encoded with: cameras and transcoders use all of them.
H264_PRESETS = ("ultrafast", "superfast", "veryfast", "faster", "fast", "medium")
HEVC_PRESETS = ("ultrafast", "superfast", "veryfast", "fast", "medium")
#: libx265 (as PyAV's wheels build it) corrupts the heap on frames smaller than its 64-pixel CTU.
HEVC_MIN_SIDE = 64


@dataclass(frozen=True, slots=True)
class Compression:
    """How a low-resolution clip is encoded: `codec` h264 (libx264) or hevc (libx265), 4:2:0,
    at `crf` with `preset`; `crf` None with h264 is lossless 4:4:4 (`qp 0`), the reference case."""

    codec: str
    crf: int | None
    preset: str = "medium"

    def label(self) -> str:
        if self.crf is None:
            return f"{self.codec} lossless 4:4:4"
        return f"{self.codec} CRF {self.crf}"


def _encoder_settings(compression: Compression) -> tuple[str, str, dict[str, str]]:
    if compression.codec == "h264":
        if compression.crf is None:
            return "libx264", "yuv444p", {"qp": "0", "preset": compression.preset}
        return "libx264", "yuv420p", {"crf": str(compression.crf), "preset": compression.preset}
    if compression.codec == "hevc" and compression.crf is not None:
        options = {"crf": str(compression.crf), "preset": compression.preset, "x265-params": "log-level=error"}
        return "libx265", "yuv420p", options
    raise ValueError(f"unsupported compression {compression}")


def encode_clip(frames: np.ndarray, compression: Compression, out: Any, *, fps: int = 30, threads: int = 1) -> None:
    """Encode uint8 RGB frames `(T, H, W, 3)` into `out` (a path or a writable binary file object).

    BT.709 limited range, tagged in the stream, the way `streamflow.video.synth.write_clip` tags
    its clips, so every decoder converts back with the same matrix. A path's suffix picks the
    container; a file object gets a raw elementary stream.
    """
    import av

    encoder, pix_fmt, options = _encoder_settings(compression)
    if encoder == "libx265" and min(frames.shape[1:3]) < HEVC_MIN_SIDE:
        raise ValueError(f"libx265 needs frames of at least {HEVC_MIN_SIDE}x{HEVC_MIN_SIDE}, got {frames.shape[1:3]}")
    fmt = None if isinstance(out, str | Path) else compression.codec
    with av.open(str(out) if isinstance(out, Path) else out, "w", format=fmt) as container:
        stream = container.add_stream(encoder, rate=fps)
        stream.width, stream.height, stream.pix_fmt = int(frames.shape[2]), int(frames.shape[1]), pix_fmt
        stream.options = options
        cc = stream.codec_context
        cc.thread_count = threads
        cc.colorspace, cc.color_primaries, cc.color_trc, cc.color_range = 1, 1, 1, 1  # BT.709, limited
        for i, rgb in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
            frame = frame.reformat(format=pix_fmt, dst_colorspace="ITU709", src_colorspace="ITU709")
            frame.colorspace, frame.color_range = 1, 1
            frame.pts, frame.time_base = i, Fraction(1, fps)
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))


def decode_clip(source: Any) -> np.ndarray:
    """Every frame of a clip as uint8 RGB `(T, H, W, 3)`, converted with the BT.709 limited matrix
    `encode_clip` tags (the matrix the pipeline's decoders read off the stream)."""
    import av

    with av.open(source) as container:
        frames = [
            f.reformat(format="rgb24", src_colorspace="ITU709", dst_colorspace="ITU709").to_ndarray()
            for f in container.decode(video=0)
        ]
    return np.stack(frames)


def compress_clip(frames: np.ndarray, compression: Compression | None) -> np.ndarray:
    """`frames` `(T, H, W, 3)` uint8 RGB as a decoder returns them after `compression` (None: unchanged).

    In memory: the encoder writes a raw H.264/HEVC stream, the decoder reads it back.
    """
    if compression is None:
        return frames
    import io

    buffer = io.BytesIO()
    encode_clip(frames, compression, buffer)
    buffer.seek(0)
    decoded = decode_clip(buffer)
    if decoded.shape != frames.shape:
        raise RuntimeError(f"{compression.label()}: decoded {decoded.shape}, expected {frames.shape}")
    return decoded


def sample_compression(u: torch.Tensor) -> Compression:
    """A codec, CRF and preset from 3 uniform numbers: 70 % H.264 at CRF 14-36, 30 % HEVC at CRF 16-38
    (HEVC spends fewer bits at the same CRF, so its range sits higher)."""
    a, b, c = (float(v) for v in u)
    if a < 0.7:
        return Compression("h264", 14 + int(b * 23), H264_PRESETS[min(int(c * len(H264_PRESETS)), 5)])
    return Compression("hevc", 16 + int(b * 23), HEVC_PRESETS[min(int(c * len(HEVC_PRESETS)), 4)])


def _compress_one(job: tuple[np.ndarray, Compression | None]) -> np.ndarray:
    return compress_clip(*job)


class ClipPool:
    """Training clips with codec damage, made once and sampled every step.

    Encoding runs on the CPU (libx264/libx265 through PyAV), far slower per sample than a GPU
    training step, so the clips are made up front in a process pool and kept on the device as
    uint8: `lr` `(N, T, 3, side, side)` as the decoder returned it, `hr` `(N, C, 3, 2 side, 2 side)`
    the ground truth of the C frames that can be a window's centre. Clips are `frames` long so
    that the centre frames are mostly P/B frames, as in a running stream, not the first I frame.
    """

    def __init__(self, lr: torch.Tensor, hr: torch.Tensor, window: int) -> None:
        self.lr, self.hr, self.window = lr, hr, window
        self.first_centre = (window - 1) // 2

    @classmethod
    def build(
        cls,
        photos: Sequence[torch.Tensor],
        *,
        clips: int,
        frames: int,
        side: int,
        window: int,
        gen: torch.Generator,
        workers: int = 0,
        chunk: int = 256,
        colour: bool = False,
    ) -> ClipPool:
        import concurrent.futures
        import multiprocessing

        centres = frames - window + 1
        if centres < 1:
            raise ValueError(f"clips of {frames} frames cannot hold a window of {window}")
        first = (window - 1) // 2
        device = photos[0].device
        lr_parts, hr_parts = [], []
        executor = (
            concurrent.futures.ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"))
            if workers > 0
            else None
        )
        try:
            for start in range(0, clips, chunk):
                n = min(chunk, clips - start)
                seq, u = render_clips(photos, n, frames, side * SCALE, gen, colour=colour)
                lr = degrade_clips(seq, u, gen).mul(255).round_().to(torch.uint8)
                draws = torch.rand(n, 3, generator=gen)
                rgb = lr.permute(0, 1, 3, 4, 2).cpu().numpy()
                jobs = [(rgb[k], sample_compression(draws[k])) for k in range(n)]
                done = executor.map(_compress_one, jobs, chunksize=8) if executor else map(_compress_one, jobs)
                lr_parts.append(torch.from_numpy(np.stack(list(done))).permute(0, 1, 4, 2, 3).to(device))
                hr_parts.append(seq[:, first : first + centres].mul(255).round_().to(torch.uint8))
                log.info("clip pool: %d/%d clips", start + n, clips)
        finally:
            if executor:
                executor.shutdown()
        return cls(torch.cat(lr_parts), torch.cat(hr_parts), window)

    def sample(self, batch: int, patch: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """Input `(B, 3 * window, patch, patch)` and target `(B, 3, 2 patch, 2 patch)` in [0, 1],
        a random clip, centre frame, position and flip/transpose each."""
        n, _, _, side, _ = self.lr.shape
        centres = self.hr.shape[1]
        idx = torch.randint(n, (batch,), generator=gen)
        centre = torch.randint(centres, (batch,), generator=gen)
        pos = torch.randint(side - patch + 1, (batch, 2), generator=gen)
        flips = (torch.rand(batch, 3, generator=gen) < 0.5).to(self.lr.device)
        xs, ys = [], []
        for b in range(batch):
            i, c, y0, x0 = int(idx[b]), int(centre[b]), int(pos[b, 0]), int(pos[b, 1])
            xs.append(self.lr[i, c : c + self.window, :, y0 : y0 + patch, x0 : x0 + patch])
            hy, hx = y0 * SCALE, x0 * SCALE
            ys.append(self.hr[i, c, :, hy : hy + patch * SCALE, hx : hx + patch * SCALE].unsqueeze(0))
        seq_lr = torch.stack(xs).float().div_(255.0)  # (B, window, 3, p, p)
        seq_hr = torch.stack(ys).float().div_(255.0)  # (B, 1, 3, 2p, 2p)
        lr, hr = flip_sequences(seq_lr, flips), flip_sequences(seq_hr, flips)
        return lr.reshape(batch, 3 * self.window, patch, patch), hr[:, 0].contiguous()


@dataclass(slots=True)
class EvalSequence:
    name: str
    hr: torch.Tensor  # (T, 3, H, W)
    lr: torch.Tensor  # (T, 3, H/2, W/2)


#: The blur of the first evaluation (models/VSR.md's first table): the training kernel, fixed.
EVAL_BLUR_SIGMA = 0.8


def make_eval_sequence(
    photo: Photo,
    frames: int,
    seed: int,
    device: torch.device,
    *,
    blur: float = EVAL_BLUR_SIGMA,
    compression: Compression | None = None,
) -> EvalSequence:
    """A fixed sequence from a held-out photograph: a slow diagonal pan with sub-pixel jitter.

    The degradation is fixed so every model and the bicubic baseline see the same input: Gaussian
    blur `blur` HR pixels (0: none), area x2, no noise, 8-bit, then `compression` if given (the
    input as a decoder returns it).
    """
    gen = torch.Generator().manual_seed(seed)
    img = _to_tensor(photo.image, device)
    _, height, width = img.shape
    rel = torch.arange(frames, dtype=torch.float32) - (frames - 1) // 2
    shifts = rel.view(-1, 1) * torch.tensor([0.9, 0.6]) + torch.randn(frames, 2, generator=gen) * 0.3
    zooms = 1 + 0.003 * rel
    margin = math.ceil(float(shifts.abs().max()) + 0.02 * max(height, width)) + 4
    h = (height - 2 * margin) // 4 * 4
    w = (width - 2 * margin) // 4 * 4
    hr = render_sequence(img, ((width - 1) / 2, (height - 1) / 2), (h, w), shifts, zooms)
    hr = hr.mul(255).round_().div_(255)  # a real HR video is 8-bit as well
    n = len(hr)
    lr = degrade(hr, torch.full((n,), blur), torch.ones(n, dtype=torch.bool), torch.zeros(n), gen)
    if compression is not None:
        rgb = lr.mul(255).round_().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
        lr = torch.from_numpy(compress_clip(rgb, compression)).permute(0, 3, 1, 2).to(device).float().div_(255)
    return EvalSequence(photo.name, hr, lr)


def luma_y(x: torch.Tensor, shave: int = 4) -> torch.Tensor:
    """The BT.601 luma (limited range, in [0, 1] units) of an 8-bit-rounded `(3, H, W)` image in
    [0, 1], `shave` pixels cut from every border: what the SR literature scores PSNR-Y and SSIM-Y on."""
    weights = torch.tensor([65.481, 128.553, 24.966], device=x.device).view(3, 1, 1) / 255.0
    x = x.clamp(0, 1).mul(255).round().div(255)
    return (x * weights).sum(0)[shave:-shave, shave:-shave] + 16 / 255


def psnr_y(a: torch.Tensor, b: torch.Tensor, shave: int = 4) -> float:
    """PSNR in dB on the BT.601 luma (as in the SR literature) of 8-bit-rounded `(3, H, W)` images in [0, 1]."""
    mse = float(F.mse_loss(luma_y(a, shave).double(), luma_y(b, shave).double()))
    return 10 * math.log10(1.0 / max(mse, 1e-12))


class OnnxModel:
    """An exported model run by ONNX Runtime, callable like `VSRNet` so `evaluate` scores the shipped file."""

    def __init__(self, path: str | Path) -> None:
        import onnxruntime as ort

        self.session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        self.window = int(self.session.get_inputs()[0].shape[1]) // 3

    def to(self, device: torch.device) -> OnnxModel:
        return self

    def eval(self) -> OnnxModel:
        return self

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        out = self.session.run(["hr"], {"frames": x.detach().cpu().numpy()})[0]
        return torch.from_numpy(out).to(x.device)


class StackedOnnxModel:
    """An N-in/M-out NHWC export (`export-stacked`) run by ONNX Runtime over whole sequences.

    Frames go in as the `window` stage feeds them with `frames_out: M`: groups of M target frames,
    each with its (N - M) / 2 neighbours on either side, the clip's first and last frame repeated
    beyond its ends, and only real frames kept from the last group.
    """

    def __init__(self, path: str | Path) -> None:
        import onnxruntime as ort

        self.session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        self.frames_in = int(self.session.get_inputs()[0].shape[3]) // 3
        self.frames_out = int(self.session.get_outputs()[0].shape[3]) // 3

    def upscale(self, frames: list[torch.Tensor]) -> list[torch.Tensor]:
        before = (self.frames_in - self.frames_out) // 2
        last, out = len(frames) - 1, []
        name = self.session.get_inputs()[0].name
        for start in range(0, len(frames), self.frames_out):
            picks = [min(max(start - before + k, 0), last) for k in range(self.frames_in)]
            x = torch.cat([frames[i] for i in picks]).permute(1, 2, 0).unsqueeze(0)
            y = torch.from_numpy(self.session.run(None, {name: x.cpu().numpy()})[0])[0].permute(2, 0, 1)
            out.extend(y.reshape(self.frames_out, 3, *y.shape[1:])[: len(frames) - start])
        return out


@torch.no_grad()
def evaluate(
    model: VSRNet | OnnxModel | StackedOnnxModel, seqs: Sequence[EvalSequence], device: torch.device
) -> list[dict[str, Any]]:
    """Per sequence: mean PSNR-Y over all frames (edges padded like the `window` stage) for bicubic and model."""
    if not isinstance(model, StackedOnnxModel):
        model = model.to(device).eval()
    rows = []
    for seq in seqs:
        frames = list(seq.lr)
        bic, net = [], []
        if isinstance(model, StackedOnnxModel):
            outputs = [o.to(device) for o in model.upscale(frames)]
        else:
            outputs = [model(stack_window(frames, i, model.window).unsqueeze(0))[0] for i in range(len(frames))]
        for i, out in enumerate(outputs):
            up = F.interpolate(frames[i].unsqueeze(0), scale_factor=SCALE, mode="bicubic", align_corners=False)[0]
            bic.append(psnr_y(up, seq.hr[i]))
            net.append(psnr_y(out, seq.hr[i]))
        row: dict[str, Any] = {
            "sequence": seq.name,
            "frames": len(frames),
            "lr_size": f"{frames[0].shape[2]}x{frames[0].shape[1]}",
            "bicubic_psnr_y": round(sum(bic) / len(bic), 3),
            "model_psnr_y": round(sum(net) / len(net), 3),
        }
        row["gain_db"] = round(row["model_psnr_y"] - row["bicubic_psnr_y"], 3)
        rows.append(row)
    return rows


def eval_markdown(rows: Sequence[dict[str, Any]]) -> str:
    lines = [
        "| held-out sequence | frames | LR size | bicubic PSNR-Y (dB) | model PSNR-Y (dB) | gain (dB) |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['sequence']} | {r['frames']} | {r['lr_size']} | {r['bicubic_psnr_y']:.2f} "
            f"| {r['model_psnr_y']:.2f} | {r['gain_db']:+.2f} |"
        )
    mb = sum(r["bicubic_psnr_y"] for r in rows) / len(rows)
    mm = sum(r["model_psnr_y"] for r in rows) / len(rows)
    lines.append(f"| **mean** | | | {mb:.2f} | {mm:.2f} | {mm - mb:+.2f} |")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------- training
def init_from(model: VSRNet, path: Path) -> None:
    """Start from a checkpoint's weights; a checkpoint with a smaller window is inflated.

    Its head weights go to the frames aligned on the centre and the new neighbours get zero
    weights, so the inflated network computes exactly what the checkpoint did and training only
    has to learn how to use the extra frames. An `.onnx` from `export` gives its weights the same way.
    """
    if path.suffix == ".onnx":
        net = from_onnx_weights(path)
        ckpt = {"config": net.config(), "state_dict": net.state_dict()}
    else:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    old = dict(ckpt["config"])
    if {k: v for k, v in old.items() if k != "window"} != {k: v for k, v in model.config().items() if k != "window"}:
        raise SystemExit(f"--init {path}: architecture {old} does not match {model.config()}")
    state = dict(ckpt["state_dict"])
    if old["window"] != model.window:
        if old["window"] > model.window:
            raise SystemExit(f"--init {path}: window {old['window']} is larger than {model.window}")
        head = state["head.weight"]
        inflated = torch.zeros_like(model.head.weight, device="cpu")
        first = (model.window - 1) // 2 - (old["window"] - 1) // 2
        inflated[:, 3 * first : 3 * (first + old["window"])] = head
        state["head.weight"] = inflated
    model.load_state_dict(state)
    log.info("initialised from %s (window %d -> %d)", path, old["window"], model.window)


def _luma(x: torch.Tensor) -> torch.Tensor:
    """BT.601 luma `(N, 1, H, W)` of RGB `(N, 3, H, W)` in [0, 1] (the weights `psnr_y` scores with)."""
    weights = torch.tensor([0.299, 0.587, 0.114], device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    return (x * weights).sum(dim=1, keepdim=True)


def charbonnier(a: torch.Tensor, b: torch.Tensor, eps: float = 1e-3) -> torch.Tensor:
    return torch.sqrt((a - b) ** 2 + eps * eps).mean()


def train(
    model: VSRNet,
    photos: Sequence[torch.Tensor],
    *,
    steps: int,
    batch: int,
    patch: int,
    lr: float = 1e-3,
    seed: int = 0,
    max_seconds: float = 0.0,
    log_every: int = 100,
    pool: ClipPool | None = None,
    compressed_fraction: float = 0.0,
    bf16: bool = False,
    colour: bool = False,
    luma_weight: float = 0.0,
) -> list[float]:
    """Train in place with Adam and a cosine schedule; returns the loss of every step.

    With a `pool`, `compressed_fraction` of every batch comes from its codec-damaged clips and
    the rest is rendered fresh, uncompressed, so the model keeps what it does on clean input.
    `bf16` runs the forward pass under bfloat16 autocast (weights, optimiser and loss stay fp32).
    `colour` recolours the fresh sequences (`_recolour`); `luma_weight` adds that much of the
    loss on BT.601 luma, the channel PSNR-Y scores and the one a codec keeps at full resolution.

    The schedule follows progress = max(step / steps, elapsed / max_seconds) so a time-capped
    run still anneals to the end; `max_seconds=0` disables the cap (fully deterministic).
    """
    device = next(model.parameters()).device
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    losses: list[torch.Tensor] = []
    start = time.perf_counter()
    step = 0
    while True:
        elapsed = time.perf_counter() - start
        progress = max(step / steps, elapsed / max_seconds if max_seconds > 0 else 0.0)
        if progress >= 1.0:
            break
        for group in opt.param_groups:
            group["lr"] = lr * (0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * progress)))
        from_pool = round(batch * compressed_fraction) if pool is not None else 0
        x, y = make_batch(photos, batch - from_pool, model.window, patch, gen, colour=colour)
        if pool is not None and from_pool:
            px, py = pool.sample(from_pool, patch, gen)
            x, y = torch.cat((x, px)), torch.cat((y, py))
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            out = model(x)
        loss = charbonnier(out.float(), y)
        if luma_weight:
            loss = loss + luma_weight * charbonnier(_luma(out.float()), _luma(y))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        step += 1
        losses.append(loss.detach())  # kept on the device: no host sync per step
        if step % log_every == 0 or step == 1:
            log.info("step %d loss %.5f lr %.2e (%.0f s)", step, loss.item(), opt.param_groups[0]["lr"], elapsed)
    model.eval()
    return torch.stack(losses).cpu().tolist() if losses else []


# --------------------------------------------------------------------------------------------- CLI
def _held_out(photos: Sequence[Photo]) -> list[Photo]:
    held = [p for p in photos if p.held_out]
    if not held:
        raise SystemExit("no held-out photograph available: install scikit-image (and scikit-learn, matplotlib)")
    return held


@dataclass(frozen=True, slots=True)
class EvalCondition:
    """One way the held-out sequences' input is made: blur before the area x2, then a codec or none."""

    key: str
    title: str
    blur: float
    compression: Compression | None


#: The model-alone evaluations, in the order the tables print. `blur08` is models/VSR.md's first
#: table (the training kernel); the others are issue 21's inputs: area x2 without blur, then
#: libx264 at its default preset (`medium`) at three CRFs, as a user's decoded stream.
EVAL_CONDITIONS: dict[str, EvalCondition] = {
    c.key: c
    for c in (
        EvalCondition("blur08", "Gaussian blur 0.8 + area x2, 8-bit", EVAL_BLUR_SIGMA, None),
        EvalCondition("area", "area x2, 8-bit (no codec)", 0.0, None),
        *(
            EvalCondition(f"h264_crf{crf}", f"area x2, H.264 CRF {crf}", 0.0, Compression("h264", crf))
            for crf in (18, 23, 28)
        ),
    )
}


def _eval_and_write(
    model: VSRNet | OnnxModel | StackedOnnxModel,
    photos: Sequence[Photo],
    args: argparse.Namespace,
    device: torch.device,
) -> None:
    results: dict[str, list[dict[str, Any]]] = {}
    text = []
    for key in args.eval_conditions.split(","):
        if key not in EVAL_CONDITIONS:
            raise SystemExit(f"--eval-conditions: unknown {key!r}; choose from {', '.join(EVAL_CONDITIONS)}")
        cond = EVAL_CONDITIONS[key]
        seqs = [
            make_eval_sequence(p, args.eval_frames, 1000 + i, device, blur=cond.blur, compression=cond.compression)
            for i, p in enumerate(_held_out(photos))
        ]
        results[key] = evaluate(model, seqs, device)
        text.append(f"### {cond.title}\n\n{eval_markdown(results[key])}")
    table = "\n".join(text)
    print(table)
    if args.eval_json:
        Path(args.eval_json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.eval_json).write_text(json.dumps(results, indent=1) + "\n")
    if args.eval_md:
        Path(args.eval_md).parent.mkdir(parents=True, exist_ok=True)
        Path(args.eval_md).write_text(table)


def cmd_data(args: argparse.Namespace) -> None:
    photos = collect_photos()
    save_photos(photos, Path(args.out))
    for p in photos:
        print(f"{p.name:22s} {p.package:13s} {'held-out' if p.held_out else 'train':8s} {p.image.shape}")


def cmd_train(args: argparse.Namespace) -> None:
    device = torch.device(args.device)
    if args.threads:
        # On a shared CPU, intra-op threads that spin-wait for each other run many times slower than one thread.
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    torch.backends.cudnn.benchmark = device.type == "cuda"
    photos = load_photos(Path(args.data) if args.data else None)
    train_set = [_to_tensor(p.image, device) for p in photos if not p.held_out]
    log.info("training on %d photographs, %d held out", len(train_set), len(photos) - len(train_set))
    model = VSRNet(window=args.window, features=args.features, blocks=args.blocks)
    if args.init:
        init_from(model, Path(args.init))
    model = model.to(device)
    log.info("parameters: %d", sum(p.numel() for p in model.parameters()))
    pool = None
    if args.pool_clips:
        t_pool = time.perf_counter()
        pool = ClipPool.build(
            train_set,
            clips=args.pool_clips,
            frames=args.pool_frames,
            side=args.pool_side,
            window=args.window,
            gen=torch.Generator().manual_seed(args.seed + 1),
            workers=args.pool_workers,
            colour=args.recolour,
        )
        log.info("clip pool: %d clips in %.1f s", args.pool_clips, time.perf_counter() - t_pool)
    t0 = time.perf_counter()
    losses = train(
        model,
        train_set,
        steps=args.steps,
        batch=args.batch,
        patch=args.patch,
        lr=args.lr,
        seed=args.seed,
        max_seconds=args.max_seconds,
        log_every=args.log_every,
        pool=pool,
        compressed_fraction=args.compressed_fraction,
        bf16=args.bf16,
        colour=args.recolour,
        luma_weight=args.luma_weight,
    )
    log.info("trained %d steps in %.1f s", len(losses), time.perf_counter() - t0)
    ckpt = Path(args.checkpoint)
    ckpt.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.cpu() for k, v in model.state_dict().items()}
    meta = {
        "steps": len(losses),
        "batch": args.batch,
        "patch": args.patch,
        "seed": args.seed,
        "lr": args.lr,
        "device": str(device),
        "init": args.init,
        "bf16": args.bf16,
        "recolour": args.recolour,
        "luma_weight": args.luma_weight,
        "pool_clips": args.pool_clips,
        "pool_frames": args.pool_frames,
        "pool_side": args.pool_side,
        "compressed_fraction": args.compressed_fraction if args.pool_clips else 0.0,
    }
    torch.save({"config": model.config(), "state_dict": state, "train": meta}, ckpt)
    _eval_and_write(model, photos, args, device)


def cmd_evaluate(args: argparse.Namespace) -> None:
    device = torch.device(args.device)
    model: VSRNet | OnnxModel | StackedOnnxModel
    if args.stacked_onnx:
        model = StackedOnnxModel(args.stacked_onnx)
    else:
        model = OnnxModel(args.onnx) if args.onnx else load_checkpoint(args.checkpoint).to(device)
    _eval_and_write(model, load_photos(Path(args.data) if args.data else None), args, device)


def cmd_export(args: argparse.Namespace) -> None:
    import onnxruntime as ort

    model = load_checkpoint(args.checkpoint)
    path = export_onnx(model, args.onnx)
    photo = _held_out(load_photos(Path(args.data) if args.data else None))[0]
    seq = make_eval_sequence(photo, model.window, 1000, torch.device("cpu"))
    x = torch.stack([stack_window(list(seq.lr), i, model.window) for i in range(2)])
    with torch.no_grad():
        expected = model(x).numpy()
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, {"frames": x.numpy()})[0]
    diff = float(np.abs(got - expected).max())
    size_mb = path.stat().st_size / 1e6
    print(f"exported {path} ({size_mb:.2f} MB); ONNX Runtime vs torch on {tuple(x.shape)}: max |diff| {diff:.2e}")
    if diff > args.atol:
        raise SystemExit(f"ONNX Runtime output differs from torch by {diff:.2e} > {args.atol:.0e}")


def cmd_soup(args: argparse.Namespace) -> None:
    """Every float initializer as (1 - w) * first + w * second; the graph is the first file's. Both
    files must be exports of the same network (same initializer names and shapes)."""
    import onnx
    from onnx import numpy_helper

    if not 0.0 <= args.second_weight <= 1.0:
        raise SystemExit(f"--second-weight must be within 0..1, got {args.second_weight}")
    first, second = onnx.load(args.first), onnx.load(args.second)
    others = {init.name: numpy_helper.to_array(init) for init in second.graph.initializer}
    mixed = 0
    for position, init in enumerate(first.graph.initializer):
        mine = numpy_helper.to_array(init)
        theirs = others.get(init.name)
        if theirs is None or theirs.shape != mine.shape:
            raise SystemExit(f"{args.second}: no initializer {init.name!r} of shape {mine.shape}: not the same network")
        if mine.dtype.kind == "f":
            blend = ((1.0 - args.second_weight) * mine + args.second_weight * theirs).astype(mine.dtype)
            first.graph.initializer[position].CopyFrom(numpy_helper.from_array(blend, init.name))
            mixed += 1
    onnx.checker.check_model(first)
    onnx.save(first, args.onnx)
    log.info(
        "%s: %d weight tensors, %.2f of %s and %.2f of %s",
        args.onnx,
        mixed,
        1.0 - args.second_weight,
        args.first,
        args.second_weight,
        args.second,
    )


def cmd_export_stacked(args: argparse.Namespace) -> None:
    import onnxruntime as ort

    net = from_onnx_weights(args.from_onnx) if args.from_onnx else load_checkpoint(args.checkpoint)
    model = StackedWindows(net, frames_in=args.frames_in, frames_out=args.frames_out)
    path = export_stacked_onnx(model, args.onnx)
    x = torch.rand(2, 36, 52, 3 * args.frames_in, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = model(x).numpy()
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    diff = float(np.abs(got - expected).max())
    print(
        f"exported {path} ({path.stat().st_size / 1e6:.2f} MB); "
        f"ONNX Runtime vs torch on {tuple(x.shape)}: max |diff| {diff:.2e}"
    )
    if diff > args.atol:
        raise SystemExit(f"ONNX Runtime output differs from torch by {diff:.2e} > {args.atol:.0e}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("data", help="extract the photographs into a folder (.npz + manifest.json)")
    p.add_argument("--out", required=True)
    p.set_defaults(func=cmd_data)

    def add_eval(p: argparse.ArgumentParser) -> None:
        p.add_argument("--data", default=None, help="folder from `data`; default: the installed packages")
        p.add_argument("--device", default="cpu")
        p.add_argument("--eval-frames", type=int, default=9, help="frames per held-out sequence")
        p.add_argument("--eval-json", default=None)
        p.add_argument("--eval-md", default=None)
        p.add_argument(
            "--eval-conditions",
            default=",".join(EVAL_CONDITIONS),
            help=f"comma-separated inputs to evaluate on: {', '.join(EVAL_CONDITIONS)}",
        )

    p = sub.add_parser("train", help="train, save a checkpoint, evaluate on the held-out sequences")
    add_eval(p)
    p.add_argument("--steps", type=int, default=20000)
    p.add_argument("--max-seconds", type=float, default=0.0, help="stop (annealed) after this long; 0 = no cap")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--patch", type=int, default=48, help="low-resolution patch side")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--window", type=int, default=5)
    p.add_argument("--features", type=int, default=32)
    p.add_argument("--blocks", type=int, default=6)
    p.add_argument("--log-every", type=int, default=200)
    p.add_argument("--threads", type=int, default=0, help="CPU threads for torch; 0 = torch's default")
    p.add_argument(
        "--init", default=None, help="start from this checkpoint or `export`ed .onnx (a smaller window is inflated)"
    )
    p.add_argument("--pool-clips", type=int, default=0, help="codec-damaged training clips to make (0: none)")
    p.add_argument("--pool-frames", type=int, default=7, help="frames per pool clip (centres are mostly P/B)")
    p.add_argument("--pool-side", type=int, default=96, help="low-resolution side of a pool clip")
    p.add_argument("--pool-workers", type=int, default=0, help="encoder processes making the pool (0: in-process)")
    p.add_argument("--compressed-fraction", type=float, default=0.75, help="share of each batch from the pool")
    p.add_argument("--bf16", action="store_true", help="forward pass under bfloat16 autocast (faster on a GPU)")
    p.add_argument("--recolour", action="store_true", help="random channel order and saturation per sequence")
    p.add_argument("--luma-weight", type=float, default=0.0, help="extra loss on BT.601 luma, this much of it")
    p.add_argument("--checkpoint", default="out/vsr_x2.pt")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("evaluate", help="evaluate a checkpoint (or an exported model) on the held-out sequences")
    add_eval(p)
    p.add_argument("--checkpoint", default="out/vsr_x2.pt")
    p.add_argument("--onnx", default=None, help="evaluate this ONNX file with ONNX Runtime instead of a checkpoint")
    p.add_argument("--stacked-onnx", default=None, help="evaluate an N-in/M-out NHWC export (export-stacked)")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("export-stacked", help="export as N frames in, M out, NHWC (BMF's SR engine layout)")
    p.add_argument("--checkpoint", default="out/vsr_x2.pt")
    p.add_argument("--from-onnx", default=None, help="take the network's weights from this `export` file instead")
    p.add_argument("--onnx", default="models/vsr_x2_7in3out_nhwc.onnx")
    p.add_argument("--frames-in", type=int, default=7)
    p.add_argument("--frames-out", type=int, default=3)
    p.add_argument("--atol", type=float, default=1e-4)
    p.set_defaults(func=cmd_export_stacked)

    p = sub.add_parser("soup", help="average the weights of two exports of the same network (a weight soup)")
    p.add_argument("--first", required=True, help="an `export` file")
    p.add_argument("--second", required=True, help="an `export` file of the same architecture")
    p.add_argument("--second-weight", type=float, required=True, help="share of the second file's weights, 0..1")
    p.add_argument("--onnx", required=True, help="where the averaged model goes")
    p.set_defaults(func=cmd_soup)

    p = sub.add_parser("export", help="export a checkpoint to ONNX and check ONNX Runtime against torch")
    p.add_argument("--checkpoint", default="out/vsr_x2.pt")
    p.add_argument("--onnx", default="models/vsr_x2.onnx")
    p.add_argument("--data", default=None)
    p.add_argument("--atol", type=float, default=1e-4)
    p.set_defaults(func=cmd_export)
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    args = build_parser().parse_args(argv)
    args.func(args)


if __name__ == "__main__":
    main()
