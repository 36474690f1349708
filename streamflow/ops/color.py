"""Colour conversion between NV12 and RGB (BT.601 / BT.709, limited or full range), on CPU or CUDA.

All functions are vectorised torch code: the same call runs on a CPU tensor in CI and on a CUDA
tensor on the decoder's stream. Leading dimensions are batch dimensions.

Example:
    >>> import torch
    >>> rgb = torch.full((3, 4, 6), 128, dtype=torch.uint8)
    >>> nv12 = rgb_to_nv12(rgb)
    >>> tuple(nv12.shape)
    (6, 6)
    >>> back = nv12_to_rgb(nv12)
    >>> int((back.int() - rgb.int()).abs().max()) <= 1
    True
"""

from __future__ import annotations

import enum

import torch
import torch.nn.functional as F

__all__ = [
    "ColorMatrix",
    "nv12_to_rgb",
    "nv12_to_yuv",
    "rgb_to_nv12",
    "yuv420_to_nv12",
]


class ColorMatrix(enum.StrEnum):
    """YCbCr matrix coefficients (ITU-R recommendation)."""

    BT601 = "bt601"
    BT709 = "bt709"


# (Kr, Kb) luma weights; Kg = 1 - Kr - Kb.
_LUMA_WEIGHTS: dict[ColorMatrix, tuple[float, float]] = {
    ColorMatrix.BT601: (0.299, 0.114),
    ColorMatrix.BT709: (0.2126, 0.0722),
}


def _weights(matrix: str | ColorMatrix) -> tuple[float, float, float]:
    try:
        kr, kb = _LUMA_WEIGHTS[ColorMatrix(matrix)]
    except ValueError:
        raise ValueError(f"unknown colour matrix {matrix!r}: use one of {[m.value for m in ColorMatrix]}") from None
    return kr, 1.0 - kr - kb, kb


def _split_nv12(nv12: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int, int]:
    if nv12.dtype != torch.uint8 or nv12.dim() < 2:
        raise ValueError(f"NV12 must be a uint8 tensor (..., H*3//2, W), got {nv12.dtype} {tuple(nv12.shape)}")
    rows, width = nv12.shape[-2], nv12.shape[-1]
    if rows % 3 or width % 2 or (rows // 3) % 1:
        raise ValueError(f"NV12 shape (..., {rows}, {width}) is not (..., H*3//2, W) with even H and W")
    height = rows * 2 // 3
    if height % 2:
        raise ValueError(f"NV12 shape (..., {rows}, {width}) gives odd height {height}; NV12 needs even H and W")
    y = nv12[..., :height, :]
    # Interleaved Cb,Cr pairs at half resolution: (..., H/2, W/2, 2).
    uv = nv12[..., height:, :].reshape(*nv12.shape[:-2], height // 2, width // 2, 2)
    return y, uv, height, width


def nv12_to_yuv(nv12: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Split NV12 `(..., H*3//2, W)` into Y `(..., H, W)`, U and V `(..., H/2, W/2)` views (no copy of Y)."""
    y, uv, _, _ = _split_nv12(nv12)
    return y, uv[..., 0], uv[..., 1]


def yuv420_to_nv12(y: torch.Tensor, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Pack planar 4:2:0 (Y `(..., H, W)`, U/V `(..., H/2, W/2)`) into NV12 `(..., H*3//2, W)`.

    Example:
        >>> import torch
        >>> y = torch.zeros(4, 4, dtype=torch.uint8); u = torch.ones(2, 2, dtype=torch.uint8)
        >>> yuv420_to_nv12(y, u, u * 2)[4].tolist()
        [1, 2, 1, 2]
    """
    uv = torch.stack((u, v), dim=-1).reshape(*u.shape[:-1], u.shape[-1] * 2)
    return torch.cat((y, uv), dim=-2)


def _upsample_chroma_sited(chroma: torch.Tensor) -> torch.Tensor:
    """`(..., h, w)` chroma to `(..., 2h, 2w)` by linear interpolation at 4:2:0's default siting
    (MPEG-2/H.264 `chroma_sample_loc_type` 0: co-sited with the even luma columns, halfway between
    two luma rows); edges repeat the last sample."""
    right = torch.cat((chroma[..., 1:], chroma[..., -1:]), dim=-1)
    wide = torch.stack((chroma, (chroma + right) * 0.5), dim=-1).flatten(-2)
    above = torch.cat((wide[..., :1, :], wide[..., :-1, :]), dim=-2)
    below = torch.cat((wide[..., 1:, :], wide[..., -1:, :]), dim=-2)
    return torch.stack((wide * 0.75 + above * 0.25, wide * 0.75 + below * 0.25), dim=-2).flatten(-3, -2)


def nv12_to_rgb(
    nv12: torch.Tensor, *, matrix: str = "bt709", full_range: bool = False, chroma: str = "nearest"
) -> torch.Tensor:
    """Convert uint8 NV12 `(..., H*3//2, W)` to uint8 RGB `(..., 3, H, W)` on the same device.

    `chroma="nearest"` upsamples chroma by repeating each sample (as swscale's default YUV->RGB
    path and NVDEC's own converters do), so results match PyAV/FFmpeg closely; `"linear"`
    interpolates it at 4:2:0's default siting (smoother colour edges, for models trained on
    full-resolution colour).

    Example:
        >>> import torch
        >>> nv12 = torch.cat([torch.full((2, 2), 235), torch.full((1, 2), 128)]).to(torch.uint8)
        >>> nv12_to_rgb(nv12)[:, 0, 0].tolist()
        [255, 255, 255]
    """
    kr, kg, kb = _weights(matrix)
    y, uv, _, _ = _split_nv12(nv12)
    yf = y.float()
    cf = uv.float() - 128.0
    if full_range:
        cscale = 1.0
    else:
        yf = (yf - 16.0) * (255.0 / 219.0)
        cscale = 255.0 / 224.0
    cb = cf[..., 0] * cscale
    cr = cf[..., 1] * cscale
    # Chroma contributions at half resolution, then one upsample of a (…, 3, H/2, W/2) stack.
    r_c = (2.0 * (1.0 - kr)) * cr
    b_c = (2.0 * (1.0 - kb)) * cb
    g_c = -(kr * r_c + kb * b_c) / kg
    contributions = torch.stack((r_c, g_c, b_c), dim=-3)
    if chroma == "nearest":
        full = contributions.repeat_interleave(2, dim=-2).repeat_interleave(2, dim=-1)
    elif chroma == "linear":
        full = _upsample_chroma_sited(contributions)
    else:
        raise ValueError(f"chroma must be 'nearest' or 'linear', got {chroma!r}")
    rgb = yf.unsqueeze(-3) + full
    return rgb.round_().clamp_(0.0, 255.0).to(torch.uint8)


def rgb_to_nv12(rgb: torch.Tensor, *, matrix: str = "bt709", full_range: bool = False) -> torch.Tensor:
    """Convert uint8 RGB `(..., 3, H, W)` (even H and W) to uint8 NV12 `(..., H*3//2, W)`.

    Chroma is the mean of each 2x2 block.

    Example:
        >>> import torch
        >>> rgb_to_nv12(torch.zeros(3, 2, 2, dtype=torch.uint8)).tolist()
        [[16, 16], [16, 16], [128, 128]]
    """
    if rgb.dtype != torch.uint8 or rgb.dim() < 3 or rgb.shape[-3] != 3:
        raise ValueError(f"RGB must be a uint8 tensor (..., 3, H, W), got {rgb.dtype} {tuple(rgb.shape)}")
    height, width = rgb.shape[-2], rgb.shape[-1]
    if height % 2 or width % 2:
        raise ValueError(f"RGB size {width}x{height} must be even in both dimensions for NV12")
    kr, kg, kb = _weights(matrix)
    f = rgb.float()
    r, g, b = f[..., 0, :, :], f[..., 1, :, :], f[..., 2, :, :]
    y = kr * r + kg * g + kb * b
    cb = (b - y) / (2.0 * (1.0 - kb))
    cr = (r - y) / (2.0 * (1.0 - kr))
    lead = cb.shape[:-2]
    cbcr = torch.stack((cb, cr), dim=-3).reshape(-1, 2, height, width)
    cbcr = F.avg_pool2d(cbcr, 2).reshape(*lead, 2, height // 2, width // 2)
    if full_range:
        yq = y
        cq = cbcr + 128.0
    else:
        yq = y * (219.0 / 255.0) + 16.0
        cq = cbcr * (224.0 / 255.0) + 128.0
    yq = yq.round_().clamp_(0.0, 255.0).to(torch.uint8)
    cq = cq.round_().clamp_(0.0, 255.0).to(torch.uint8)
    return yuv420_to_nv12(yq, cq[..., 0, :, :], cq[..., 1, :, :])
