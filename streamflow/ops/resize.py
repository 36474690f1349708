"""Resize RGB frames into a model's input: letterbox (keep aspect) or stretch, normalise, NCHW float.

`InputTransform` holds the settings of that conversion (fit, normalisation, channel order, element
type) in one validated model; the `preprocess` stage's options are this model plus its own.
Everything is torch on the images' device. The returned `Letterbox` records how model-input pixels
map back to the source frame, `x_src = (x_model - offset_x) / scale_x`, so detections can be drawn
on (and reported for) the original frame.

Example:
    >>> import torch
    >>> rgb = torch.zeros(2, 3, 720, 1280, dtype=torch.uint8)
    >>> x, lb = letterbox_resize(rgb, (384, 640))
    >>> x.shape, x.dtype
    (torch.Size([2, 3, 384, 640]), torch.float32)
    >>> half, _ = letterbox_resize(rgb, (384, 640), InputTransform(input_scale=1 / 255, dtype="fp16"))
    >>> half.dtype
    torch.float16
    >>> lb.scale_x, lb.offset_y
    (0.5, 12.0)
    >>> lb.to_source(torch.tensor([[0.0, 12.0, 640.0, 372.0]])).tolist()
    [[0.0, 0.0, 1280.0, 720.0]]
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, field_validator

# _weights is color.py's matrix table; the float conversion below must use exactly the same coefficients.
from streamflow.ops.color import _weights, nv12_to_rgb, nv12_to_yuv, yuv420_to_nv12

__all__ = [
    "ChannelOrder",
    "InputDtype",
    "InputTransform",
    "Letterbox",
    "ResizeMode",
    "fit",
    "letterbox_resize",
    "letterbox_resize_nv12",
    "normalize",
    "resize_nv12",
]


class ResizeMode(enum.StrEnum):
    """How a frame is fitted into the model's input size."""

    LETTERBOX = "letterbox"  # keep the aspect ratio, pad the rest (centred)
    STRETCH = "stretch"  # scale x and y independently to fill the input


class ChannelOrder(enum.StrEnum):
    """Channel order the model expects."""

    RGB = "rgb"
    BGR = "bgr"


class InputDtype(enum.StrEnum):
    """Element type of the model input tensor (the model's own precision is the inference backend's setting)."""

    FP32 = "fp32"
    FP16 = "fp16"

    @property
    def torch_dtype(self) -> torch.dtype:
        return torch.float16 if self is InputDtype.FP16 else torch.float32


class InputTransform(BaseModel):
    """How frames become a model input: fit, normalisation `(pixel * input_scale - mean) / std`, layout.

    Example:
        >>> InputTransform(input_scale=1 / 255, mean=(0.5, 0.5, 0.5), channel_order="bgr").channel_order
        <ChannelOrder.BGR: 'bgr'>
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    mode: ResizeMode = Field(default=ResizeMode.LETTERBOX, description="letterbox (keep aspect, pad) or stretch")
    input_scale: float = Field(default=1.0, description="pixels (0..255) are multiplied by this first, e.g. 1/255")
    mean: tuple[float, float, float] = Field(default=(0.0, 0.0, 0.0), description="per-channel mean, after input_scale")
    std: tuple[float, float, float] = Field(default=(1.0, 1.0, 1.0), description="per-channel std, after input_scale")
    pad_value: float = Field(default=0.0, description="letterbox padding, in pixel units before normalisation")
    dtype: InputDtype = Field(default=InputDtype.FP32, description="element type of the model input")
    channel_order: ChannelOrder = Field(default=ChannelOrder.RGB, description="channel order the model expects")
    antialias: bool = Field(default=True, description="low-pass filter when shrinking (avoids aliasing at 1080p->640)")

    @field_validator("std")
    @classmethod
    def _nonzero_std(cls, value: tuple[float, float, float]) -> tuple[float, float, float]:
        if any(s == 0 for s in value):
            raise ValueError("std must not contain 0")
        return value


_IDENTITY = InputTransform()


@dataclass(frozen=True, slots=True)
class Letterbox:
    """Mapping between a source frame (`width` x `height`) and the model input it was resized into.

    A source pixel x lands at `x * scale_x + offset_x` in the model input.
    """

    scale_x: float
    scale_y: float
    offset_x: float
    offset_y: float
    width: int  # source frame width in pixels
    height: int  # source frame height in pixels

    def to_source(self, xy: torch.Tensor) -> torch.Tensor:
        """Map model-input coordinates back to source pixels; `xy` is (..., 2k) as x, y, x, y, ..."""
        k = xy.shape[-1] // 2
        scale = torch.tensor([self.scale_x, self.scale_y] * k, dtype=xy.dtype, device=xy.device)
        offset = torch.tensor([self.offset_x, self.offset_y] * k, dtype=xy.dtype, device=xy.device)
        return (xy - offset) / scale

    def to_model(self, xy: torch.Tensor) -> torch.Tensor:
        """Map source pixels to model-input coordinates; the inverse of `to_source`."""
        k = xy.shape[-1] // 2
        scale = torch.tensor([self.scale_x, self.scale_y] * k, dtype=xy.dtype, device=xy.device)
        offset = torch.tensor([self.offset_x, self.offset_y] * k, dtype=xy.dtype, device=xy.device)
        return xy * scale + offset


def fit(src_hw: tuple[int, int], dst_hw: tuple[int, int], mode: ResizeMode | str = ResizeMode.LETTERBOX) -> Letterbox:
    """Where a `src_hw` frame goes inside a `dst_hw` input.

    Example:
        >>> lb = fit((1080, 1920), (480, 640))
        >>> round(lb.scale_x, 4), lb.offset_x, lb.offset_y
        (0.3333, 0.0, 60.0)
    """
    (sh, sw), (dh, dw) = src_hw, dst_hw
    if min(sh, sw, dh, dw) <= 0:
        raise ValueError(f"fit: sizes must be positive, got source {src_hw} and destination {dst_hw}")
    if ResizeMode(mode) is ResizeMode.STRETCH:
        return Letterbox(dw / sw, dh / sh, 0.0, 0.0, sw, sh)
    s = min(dw / sw, dh / sh)
    # The resized content is a whole number of pixels; the exact per-axis scale is what maps back.
    nw, nh = max(1, round(sw * s)), max(1, round(sh * s))
    return Letterbox(nw / sw, nh / sh, float((dw - nw) // 2), float((dh - nh) // 2), sw, sh)


def normalize(
    x: torch.Tensor,
    *,
    input_scale: float = 1.0,
    mean: Sequence[float] = (0.0, 0.0, 0.0),
    std: Sequence[float] = (1.0, 1.0, 1.0),
) -> torch.Tensor:
    """`(x * input_scale - mean) / std` per channel of an (N, C, H, W) float tensor, in place."""
    if input_scale != 1.0:
        x.mul_(input_scale)
    if any(m != 0.0 for m in mean):
        x.sub_(torch.tensor(mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1))
    if any(s != 1.0 for s in std):
        x.div_(torch.tensor(std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1))
    return x


def _interpolate(x: torch.Tensor, size: tuple[int, int], antialias: bool) -> torch.Tensor:
    """Bilinear resize of (N, C, H, W) to `size`, computed and returned in float32 on every device.

    uint8 input is converted first on purpose: the CPU's uint8 kernel (vectorised, several times
    faster: docs/MEASURED.md, "Resize") uses fixed-point weights and rounds its output to whole
    levels, while CUDA has no uint8 antialias kernel. Mixing the two put CPU and GPU inputs up to a
    grey level apart (more after colour conversion), enough to move a CenterFace heatmap peak by one
    cell. In float32 both devices compute the same filter and differ only in summation order (about
    1e-4 of a level).
    """
    return F.interpolate(x.to(torch.float32), size=size, mode="bilinear", align_corners=False, antialias=antialias)


def _yuv_to_rgb(y: torch.Tensor, uv: torch.Tensor, *, matrix: str, full_range: bool) -> torch.Tensor:
    """Float `nv12_to_rgb`: Y `(N, H, W)` and Cb,Cr `(N, 2, H/2, W/2)` in level units -> `(N, 3, H, W)`.

    The same arithmetic as `streamflow.ops.color.nv12_to_rgb` (nearest chroma upsampling), minus its
    final rounding to uint8: the resized planes are not whole levels, and rounding them (and then the
    RGB) twice would add up to several levels of error that differs between devices.
    """
    kr, kg, kb = _weights(matrix)
    c = uv - 128.0
    if full_range:
        cscale = 1.0
    else:
        y = (y - 16.0) * (255.0 / 219.0)
        cscale = 255.0 / 224.0
    r_c = (2.0 * (1.0 - kr) * cscale) * c[:, 1]
    b_c = (2.0 * (1.0 - kb) * cscale) * c[:, 0]
    g_c = -(kr * r_c + kb * b_c) / kg
    chroma = torch.stack((r_c, g_c, b_c), dim=1).repeat_interleave(2, dim=-2).repeat_interleave(2, dim=-1)
    return (y.unsqueeze(1) + chroma).clamp_(0.0, 255.0)


def _place(
    x: torch.Tensor, lb: Letterbox, size: tuple[int, int], transform: InputTransform, *, source: torch.Tensor
) -> torch.Tensor:
    """Pad resized content `x` into the `size` input at the letterbox offset, then normalise."""
    n, _, nh, nw = x.shape
    dh, dw = size
    if transform.channel_order is ChannelOrder.BGR:
        x = x.flip(1)
    if (nh, nw) != (dh, dw):
        out = torch.full((n, 3, dh, dw), transform.pad_value, dtype=x.dtype, device=x.device)
        ox, oy = int(lb.offset_x), int(lb.offset_y)
        out[:, :, oy : oy + nh, ox : ox + nw] = x
        x = out
    elif x.data_ptr() == source.data_ptr():
        x = x.clone()  # normalize() works in place: never on the caller's tensor
    x = normalize(x, input_scale=transform.input_scale, mean=transform.mean, std=transform.std)
    return x.to(transform.dtype.torch_dtype)


def letterbox_resize(
    rgb: torch.Tensor, size: tuple[int, int], transform: InputTransform = _IDENTITY
) -> tuple[torch.Tensor, Letterbox]:
    """Resize uint8 or float RGB `(3, H, W)` or `(N, 3, H, W)` to a normalised `(N, 3, h, w)` batch.

    `size` is the model input (h, w); `transform` says how (the default only resizes, letterboxed,
    to float32). Its `pad_value` is in source pixel units (before normalisation), so padding looks
    like that grey level to the model. `antialias` low-pass filters when shrinking, which matters
    for 1080p -> 640 (a factor of 3). All frames of one call share a size and therefore one `Letterbox`.

    Example:
        >>> import torch
        >>> white = torch.full((3, 100, 200), 255, dtype=torch.uint8)
        >>> x, lb = letterbox_resize(white, (64, 64), InputTransform(input_scale=1 / 255))
        >>> x.shape, round(float(x[0, 0, 32, 32]), 4), float(x[0, 0, 0, 0]), lb.offset_y
        (torch.Size([1, 3, 64, 64]), 1.0, 0.0, 16.0)
    """
    if rgb.ndim == 3:
        rgb = rgb.unsqueeze(0)
    if rgb.ndim != 4 or rgb.shape[1] != 3:
        raise ValueError(f"letterbox_resize expects (3, H, W) or (N, 3, H, W) RGB, got shape {tuple(rgb.shape)}")
    _, _, sh, sw = rgb.shape
    lb = fit((sh, sw), size, transform.mode)
    nw, nh = round(sw * lb.scale_x), round(sh * lb.scale_y)
    # Resample and normalise in fp32 on every device (see _interpolate); cast to `dtype` at the end.
    x = _interpolate(rgb, (nh, nw), transform.antialias) if (nh, nw) != (sh, sw) else rgb.to(torch.float32)
    return _place(x, lb, size, transform, source=rgb), lb


def resize_nv12(nv12: torch.Tensor, size: tuple[int, int], *, antialias: bool = True) -> torch.Tensor:
    """Resize uint8 NV12 `(..., H*3//2, W)` to `(..., h*3//2, w)` plane by plane (h, w even).

    Example:
        >>> import torch
        >>> resize_nv12(torch.zeros(2, 1080 * 3 // 2, 1920, dtype=torch.uint8), (360, 640)).shape
        torch.Size([2, 540, 640])
    """
    h, w = size
    if h % 2 or w % 2:
        raise ValueError(f"NV12 needs an even size, got {h}x{w}")
    y, u, v = nv12_to_yuv(nv12)
    lead = y.shape[:-2]
    y_small = _interpolate(y.reshape(-1, 1, *y.shape[-2:]), (h, w), antialias)
    uv = torch.stack((u, v), dim=-3).reshape(-1, 2, *u.shape[-2:])
    uv_small = _interpolate(uv, (h // 2, w // 2), antialias)
    y8 = y_small.round_().clamp_(0, 255).to(torch.uint8).reshape(*lead, h, w)
    uv8 = uv_small.round_().clamp_(0, 255).to(torch.uint8).reshape(*lead, 2, h // 2, w // 2)
    return yuv420_to_nv12(y8, uv8[..., 0, :, :], uv8[..., 1, :, :])


def letterbox_resize_nv12(
    nv12: torch.Tensor,
    size: tuple[int, int],
    transform: InputTransform = _IDENTITY,
    *,
    matrix: str = "bt709",
    full_range: bool = False,
) -> tuple[torch.Tensor, Letterbox]:
    """`letterbox_resize` for NV12 `(H*3//2, W)` or `(N, H*3//2, W)` frames.

    When shrinking to an even size, the Y and UV planes are resized first (in float32) and only the
    small result is converted to RGB, in float32 and without rounding: colour conversion is the
    costly step, and both are linear, so the order hardly changes the result (within a grey level
    or two) while the work drops by the area ratio (9x for 1080p -> 640x360). The same steps run in
    the same order on every device, so CPU and GPU inputs agree to float32 rounding. Otherwise
    (enlarging, odd sizes) the frame is converted to uint8 RGB first.

    Example:
        >>> import torch
        >>> x, lb = letterbox_resize_nv12(torch.full((1080 * 3 // 2, 1920), 128, dtype=torch.uint8), (384, 640))
        >>> x.shape, lb.offset_y
        (torch.Size([1, 3, 384, 640]), 12.0)
    """
    if nv12.ndim == 2:
        nv12 = nv12.unsqueeze(0)
    if nv12.ndim != 3:
        raise ValueError(f"letterbox_resize_nv12 expects (H*3//2, W) or (N, H*3//2, W), got {tuple(nv12.shape)}")
    sh, sw = nv12.shape[-2] * 2 // 3, nv12.shape[-1]
    lb = fit((sh, sw), size, transform.mode)
    nw, nh = round(sw * lb.scale_x), round(sh * lb.scale_y)
    if nh % 2 or nw % 2 or nh > sh or nw > sw or (nh, nw) == (sh, sw):
        x, _ = letterbox_resize(nv12_to_rgb(nv12, matrix=matrix, full_range=full_range), size, transform)
        return x, lb
    # Planes stay float from the resize through the colour conversion: no rounding to uint8 between
    # steps, so CPU and GPU agree to float32 precision rather than to a level or more.
    y, u, v = nv12_to_yuv(nv12)
    y_small = _interpolate(y[:, None], (nh, nw), transform.antialias)[:, 0]
    uv_small = _interpolate(torch.stack((u, v), dim=1), (nh // 2, nw // 2), transform.antialias)
    x = _yuv_to_rgb(y_small, uv_small, matrix=matrix, full_range=full_range)
    return _place(x, lb, size, transform, source=nv12), lb
