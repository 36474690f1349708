"""Comparing decoded pictures with their source, without expecting bit-identical encoder output.

libx264 and swscale pick SIMD kernels by processor and may split work across threads differently, so
two encode paths (thread or child process, nv12 or yuv420p input, one encoder or segments) write
different bytes on different machines. Tests compare what was decoded with the source by PSNR.
"""

from __future__ import annotations

import math

import numpy as np
import torch


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(((a.astype(np.float64) - b.astype(np.float64)) ** 2).mean())
    return math.inf if mse == 0 else 10 * math.log10(255.0**2 / mse)


def assert_close_to_source(
    outputs: list[list[np.ndarray]], frames: list[torch.Tensor], *, min_db: float = 30.0, spread_db: float = 1.5
) -> None:
    """Every output path reproduces every source frame, and no path is clearly worse than another.

    `outputs` holds each path's decoded (H, W, 3) RGB pictures, `frames` the (3, H, W) RGB sources. The
    smooth test clips score 32-35 dB per frame at the CRFs the tests use (a fresh clone's CI run gave
    31.95 on one frame of the 80x48 NV12 clip, whose chroma is a quarter of its pixels); a neighbouring
    frame scores about 24 dB and swapped colour planes about 14 dB, so a frame out of order, a wrong
    plane or a wrong colour conversion still fails `min_db` by 6 dB or more.
    """
    sources = [f.permute(1, 2, 0).numpy() for f in frames]
    scores = [[psnr(image, source) for image, source in zip(images, sources, strict=True)] for images in outputs]
    for per_frame in scores:
        assert min(per_frame) > min_db, per_frame
    for frame_scores in zip(*scores, strict=True):
        assert max(frame_scores) - min(frame_scores) < spread_db, scores
