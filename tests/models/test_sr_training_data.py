"""The codec-damaged training data of `training/train_sr.py`: real libx264/libx265 round trips,
pool clips aligned with their ground truth, and the recolouring that keeps hues from becoming a prior."""

from __future__ import annotations

from types import ModuleType

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from support.scripts import load_script


def _train_sr() -> ModuleType:
    return load_script("training/train_sr.py")


def _photos() -> list[torch.Tensor]:
    import skimage.data

    tsr = _train_sr()
    return [
        tsr._to_tensor(tsr._rgb(im), torch.device("cpu")) for im in (skimage.data.astronaut(), skimage.data.chelsea())
    ]


def _clip(frames: int = 5, side: int = 64) -> np.ndarray:
    tsr = _train_sr()
    seq, u = tsr.render_clips(_photos(), 1, frames, side * 2, torch.Generator().manual_seed(4))
    lr = tsr.degrade_clips(seq, u, torch.Generator().manual_seed(5))
    return lr[0].mul(255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(((a.astype(np.float64) - b.astype(np.float64)) ** 2).mean())
    return 10 * np.log10(255.0**2 / max(mse, 1e-12))


def test_lossless_round_trip_is_near_identity_and_crf_damage_grows_with_crf() -> None:
    tsr = _train_sr()
    clip = _clip()
    lossless = tsr.compress_clip(clip, tsr.Compression("h264", None))
    assert lossless.shape == clip.shape and lossless.dtype == np.uint8
    assert _psnr(lossless, clip) > 45  # only the 8-bit RGB -> YUV 4:4:4 -> RGB rounding
    scores = [_psnr(tsr.compress_clip(clip, tsr.Compression("h264", crf)), clip) for crf in (14, 28, 40)]
    assert scores[0] > scores[1] > scores[2], scores
    hevc = tsr.compress_clip(clip, tsr.Compression("hevc", 30, "ultrafast"))
    assert hevc.shape == clip.shape and 20 < _psnr(hevc, clip) < 45


def test_decoded_frames_keep_their_order_through_b_frames() -> None:
    tsr = _train_sr()
    clip = _clip(frames=7)
    decoded = tsr.compress_clip(clip, tsr.Compression("h264", 23, "medium")).astype(np.float64)
    errors = np.array([[((d - c.astype(np.float64)) ** 2).mean() for c in clip] for d in decoded])
    assert errors.argmin(axis=1).tolist() == list(range(7))


def test_libx265_refuses_frames_below_its_block_size_instead_of_corrupting_the_heap() -> None:
    tsr = _train_sr()
    with pytest.raises(ValueError, match="libx265 needs frames of at least 64x64"):
        tsr.compress_clip(np.zeros((2, 48, 48, 3), np.uint8), tsr.Compression("hevc", 28))


def test_pool_inputs_line_up_with_their_ground_truth() -> None:
    """The centre of every sampled window is the frame its target was rendered for, at the target's place."""
    tsr = _train_sr()
    pool = tsr.ClipPool.build(_photos(), clips=6, frames=7, side=64, window=5, gen=torch.Generator().manual_seed(3))
    assert pool.lr.shape == (6, 7, 3, 64, 64) and pool.hr.shape == (6, 3, 3, 128, 128)
    x, y = pool.sample(16, 32, torch.Generator().manual_seed(0))
    assert x.shape == (16, 15, 32, 32) and y.shape == (16, 3, 64, 64)
    down = F.avg_pool2d(y, 2)
    errors = torch.stack([(x[:, 3 * k : 3 * k + 3] - down).abs().mean(dim=(1, 2, 3)) for k in range(5)], dim=1)
    # Most samples move between frames; the centre input frame is the closest to the target's downscale.
    assert (errors.argmin(dim=1) == 2).float().mean() >= 0.75, errors


def test_recolour_permutes_channels_and_keeps_grey_grey() -> None:
    tsr = _train_sr()
    grey = torch.full((1, 2, 3, 4, 4), 0.4)
    out = tsr._recolour(grey, torch.tensor([[0.99, 0.9]]))
    assert torch.allclose(out, grey)
    red = torch.zeros(1, 1, 3, 2, 2)
    red[:, :, 0] = 1.0
    swapped = tsr._recolour(red, torch.tensor([[0.99, 0.5]]))  # order (2, 1, 0), saturation 1.0
    assert torch.allclose(swapped[0, 0, 2], torch.ones(2, 2)) and float(swapped[0, 0, :2].abs().max()) == 0.0
