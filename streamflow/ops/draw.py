"""Draw detections into frames in place, on the frames' device: boxes, landmarks, blur, pixelate.

Frames are uint8 RGB `(3, H, W)` or NV12 `(H*3//2, W)`. Everything is tensor ops with no host sync
and no per-box Python loop: the pixels a set of boxes covers are built as one (H, W) mask from
per-box row and column indicators, `mask = rows.T @ cols > 0` (a (H, K) x (K, W) product), then the
frame is written with `masked_fill_` / `torch.where`. Cost does not depend on the number of boxes.

Example:
    >>> import torch
    >>> rgb = torch.zeros(3, 20, 20, dtype=torch.uint8)
    >>> draw_boxes(rgb, torch.tensor([[2.0, 2.0, 12.0, 12.0]]), color=(255, 0, 0), thickness=1)
    >>> int(rgb[0, 2, 5]), int(rgb[0, 5, 5]), int(rgb[1, 2, 5])
    (255, 0, 0)
"""

from __future__ import annotations

import enum
import functools

import torch
import torch.nn.functional as F

from streamflow.ops.color import rgb_to_nv12

__all__ = ["Color", "FrameLayout", "blur_boxes", "box_mask", "draw_boxes", "draw_points", "pixelate_boxes"]

Color = tuple[int, int, int]


class FrameLayout(enum.StrEnum):
    """Pixel layout of the frame tensor being drawn on."""

    RGB = "rgb"  # uint8 (3, H, W)
    NV12 = "nv12"  # uint8 (H*3//2, W)


def _layout(image: torch.Tensor, layout: FrameLayout | str | None) -> FrameLayout:
    if image.dtype != torch.uint8:
        raise ValueError(f"drawing needs a uint8 frame, got {image.dtype}")
    if layout is None:
        layout = FrameLayout.RGB if image.ndim == 3 and image.shape[0] == 3 else FrameLayout.NV12
    layout = FrameLayout(layout)
    if layout is FrameLayout.RGB and (image.ndim != 3 or image.shape[0] != 3):
        raise ValueError(f"RGB frame must be (3, H, W), got {tuple(image.shape)}")
    if layout is FrameLayout.NV12 and (image.ndim != 2 or image.shape[0] % 3 or image.shape[1] % 2):
        raise ValueError(f"NV12 frame must be (H*3//2, W) with even H and W, got {tuple(image.shape)}")
    return layout


def _size(image: torch.Tensor, layout: FrameLayout) -> tuple[int, int]:
    if layout is FrameLayout.RGB:
        return int(image.shape[1]), int(image.shape[2])
    return int(image.shape[0]) * 2 // 3, int(image.shape[1])


def _rect_mask(rects: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """(H, W) bool union of integer-valued xyxy rectangles (R, 4), already clipped to the frame."""
    if rects.shape[0] == 0:
        return torch.zeros(height, width, dtype=torch.bool, device=rects.device)
    ys = torch.arange(height, device=rects.device, dtype=torch.float32)
    xs = torch.arange(width, device=rects.device, dtype=torch.float32)
    rows = ((ys >= rects[:, 1:2]) & (ys < rects[:, 3:4])).float()  # (R, H)
    cols = ((xs >= rects[:, 0:1]) & (xs < rects[:, 2:3])).float()  # (R, W)
    # A matmul on floats: fast on both devices, exact for 0/1 inputs (sums of small integers).
    return (rows.t() @ cols) > 0.5


def box_mask(boxes: torch.Tensor, height: int, width: int, *, thickness: int | None = None) -> torch.Tensor:
    """(H, W) bool mask of the pixels covered by xyxy `boxes` (filled), or by their outlines when
    `thickness` is given (the outline lies inside the box, clipped to the frame).

    Example:
        >>> import torch
        >>> box_mask(torch.tensor([[1.0, 1.0, 4.0, 3.0]]), 4, 5).int().tolist()
        [[0, 0, 0, 0, 0], [0, 1, 1, 1, 0], [0, 1, 1, 1, 0], [0, 0, 0, 0, 0]]
    """
    # Clip first so that a box reaching past the frame still shows its outline at the frame's edge.
    b = boxes.reshape(-1, 4).float().round().clamp(min=0)  # a new tensor: safe to clip in place
    b[:, 0::2].clamp_(max=width)
    b[:, 1::2].clamp_(max=height)
    if thickness is None:
        return _rect_mask(b, height, width)
    x1, y1, x2, y2 = b.unbind(1)
    t = float(thickness)
    # Four bars per box: top, bottom, left, right.
    bars = torch.stack(
        [
            torch.stack([x1, y1, x2, torch.minimum(y1 + t, y2)], dim=1),
            torch.stack([x1, torch.maximum(y2 - t, y1), x2, y2], dim=1),
            torch.stack([x1, y1, torch.minimum(x1 + t, x2), y2], dim=1),
            torch.stack([torch.maximum(x2 - t, x1), y1, x2, y2], dim=1),
        ]
    )
    return _rect_mask(bars.reshape(-1, 4), height, width)


@functools.lru_cache(maxsize=64)
def _yuv(color: Color) -> tuple[int, int, int]:
    """Limited-range BT.709 Y, U, V of an RGB colour (what the NV12 frames carry)."""
    swatch = torch.tensor(color, dtype=torch.uint8).view(3, 1, 1).expand(3, 2, 2).contiguous()
    nv12 = rgb_to_nv12(swatch).tolist()
    return nv12[0][0], nv12[2][0], nv12[2][1]


def _chroma_mask(mask: torch.Tensor) -> torch.Tensor:
    """(H/2, W/2): a chroma sample belongs to a 2x2 block; it is painted when any of its pixels is."""
    h, w = mask.shape
    return mask.view(h // 2, 2, w // 2, 2).any(dim=3).any(dim=1)


def _fill(image: torch.Tensor, layout: FrameLayout, mask: torch.Tensor, color: Color) -> None:
    """Paint `mask` (H, W) with an RGB colour, converting it to Y/UV for NV12 frames."""
    if layout is FrameLayout.RGB:
        for channel, value in enumerate(color):
            image[channel].masked_fill_(mask, int(value))
        return
    h, w = mask.shape
    y_value, u_value, v_value = _yuv(tuple(int(c) for c in color))  # type: ignore[arg-type]
    image[:h].masked_fill_(mask, y_value)
    uv = image[h:].view(h // 2, w // 2, 2)
    chroma = _chroma_mask(mask)
    uv[..., 0].masked_fill_(chroma, u_value)
    uv[..., 1].masked_fill_(chroma, v_value)


def draw_boxes(
    image: torch.Tensor,
    boxes: torch.Tensor,
    *,
    color: Color = (0, 255, 0),
    thickness: int = 2,
    layout: FrameLayout | str | None = None,
) -> None:
    """Draw xyxy `boxes` (K, 4), in frame pixels, as outlines into `image` in place.

    Example:
        >>> import torch
        >>> nv12 = torch.full((6, 4), 16, dtype=torch.uint8)  # a black 4x4 NV12 frame
        >>> draw_boxes(nv12, torch.tensor([[0.0, 0.0, 4.0, 4.0]]), color=(255, 255, 255), thickness=1)
        >>> nv12[:4].tolist()[0], nv12[:4].tolist()[1]
        ([235, 235, 235, 235], [235, 16, 16, 235])
    """
    lay = _layout(image, layout)
    if boxes.numel() == 0:
        return
    h, w = _size(image, lay)
    _fill(image, lay, box_mask(boxes.to(image.device), h, w, thickness=thickness), color)


def draw_points(
    image: torch.Tensor,
    points: torch.Tensor,
    *,
    color: Color = (255, 0, 0),
    radius: int = 2,
    layout: FrameLayout | str | None = None,
) -> None:
    """Draw points (..., 2) x, y (for example landmarks (K, 5, 2)) as filled squares, in place."""
    lay = _layout(image, layout)
    p = points.reshape(-1, 2).to(image.device).float()
    if p.shape[0] == 0:
        return
    h, w = _size(image, lay)
    r = float(radius)
    squares = torch.cat([p - r, p + r + 1], dim=1)
    _fill(image, lay, box_mask(squares, h, w), color)


def _pixelated(plane: torch.Tensor, block: int) -> torch.Tensor:
    """(C, H, W) float: mean of each block x block tile, repeated over the tile."""
    _, h, w = plane.shape
    small = F.avg_pool2d(plane[None], block, ceil_mode=True)
    return F.interpolate(small, scale_factor=block, mode="nearest")[0, :, :h, :w]


def _blurred(plane: torch.Tensor, strength: int) -> torch.Tensor:
    """(C, H, W) float: a strong, cheap blur (shrink by `strength`, 3x3 mean, smooth upscale)."""
    _, h, w = plane.shape
    small = F.avg_pool2d(plane[None], strength, ceil_mode=True)
    small = F.avg_pool2d(small, 3, stride=1, padding=1, count_include_pad=False)
    return F.interpolate(small, size=(h, w), mode="bilinear", align_corners=False)[0]


def _apply(image: torch.Tensor, layout: FrameLayout, boxes: torch.Tensor, size: int, effect: str) -> None:
    fn = _pixelated if effect == "pixelate" else _blurred
    h, w = _size(image, layout)
    mask = box_mask(boxes.to(image.device), h, w)
    if layout is FrameLayout.RGB:
        image.copy_(torch.where(mask, fn(image.float(), size).round().to(torch.uint8), image))
        return
    y = image[:h]
    y.copy_(torch.where(mask, fn(y[None].float(), size)[0].round().to(torch.uint8), y))
    uv = image[h:].view(h // 2, w // 2, 2).permute(2, 0, 1)  # (2, H/2, W/2) view into the frame
    uv.copy_(torch.where(_chroma_mask(mask), fn(uv.float(), max(1, size // 2)).round().to(torch.uint8), uv))


def pixelate_boxes(
    image: torch.Tensor, boxes: torch.Tensor, *, block: int = 16, layout: FrameLayout | str | None = None
) -> None:
    """Replace each box's pixels by `block` x `block` tile means (tiles aligned to the frame), in place.

    Example:
        >>> import torch
        >>> rgb = torch.arange(16, dtype=torch.uint8).repeat(3, 16, 1)
        >>> pixelate_boxes(rgb, torch.tensor([[0.0, 0.0, 8.0, 16.0]]), block=4)
        >>> rgb[0, 0, :8].tolist(), rgb[0, 0, 8:10].tolist()
        ([2, 2, 2, 2, 6, 6, 6, 6], [8, 9])
    """
    lay = _layout(image, layout)
    if boxes.numel():
        _apply(image, lay, boxes.reshape(-1, 4), block, "pixelate")


def blur_boxes(
    image: torch.Tensor, boxes: torch.Tensor, *, strength: int = 16, layout: FrameLayout | str | None = None
) -> None:
    """Blur each box's pixels strongly (features of the size of `strength` pixels vanish), in place."""
    lay = _layout(image, layout)
    if boxes.numel():
        _apply(image, lay, boxes.reshape(-1, 4), strength, "blur")
