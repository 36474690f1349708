"""Letterbox / stretch resizing into a model input, normalisation and the mapping back."""

from __future__ import annotations

import pytest
import torch

from streamflow.ops.color import nv12_to_rgb, rgb_to_nv12
from streamflow.ops.resize import (
    InputTransform,
    Letterbox,
    ResizeMode,
    fit,
    letterbox_resize,
    letterbox_resize_nv12,
    normalize,
    resize_nv12,
)


def smooth_rgb(n: int, h: int, w: int) -> torch.Tensor:
    """Photo-like content: random colours upsampled smoothly (no saturated single-pixel chroma)."""
    g = torch.Generator().manual_seed(n * 1000 + h)
    small = torch.randint(40, 216, (n, 3, max(2, h // 8), max(2, w // 8)), generator=g).float()
    return torch.nn.functional.interpolate(small, size=(h, w), mode="bilinear").round().to(torch.uint8)


@pytest.mark.parametrize(
    ("src", "dst", "expected"),
    [
        ((1080, 1920), (480, 640), Letterbox(1 / 3, 1 / 3, 0.0, 60.0, 1920, 1080)),
        ((720, 1280), (384, 640), Letterbox(0.5, 0.5, 0.0, 12.0, 1280, 720)),
        ((720, 1280), (480, 640), Letterbox(0.5, 0.5, 0.0, 60.0, 1280, 720)),
        ((640, 480), (384, 640), Letterbox(0.6, 0.6, 176.0, 0.0, 480, 640)),  # portrait: pillarbox
    ],
)
def test_fit_letterbox(src: tuple[int, int], dst: tuple[int, int], expected: Letterbox) -> None:
    got = fit(src, dst)
    assert got.width == expected.width and got.height == expected.height
    assert (got.scale_x, got.scale_y, got.offset_x, got.offset_y) == pytest.approx(
        (expected.scale_x, expected.scale_y, expected.offset_x, expected.offset_y)
    )


def test_fit_stretch_and_bad_sizes() -> None:
    assert fit((720, 1280), (384, 640), ResizeMode.STRETCH) == Letterbox(0.5, 384 / 720, 0.0, 0.0, 1280, 720)
    with pytest.raises(ValueError, match="positive"):
        fit((0, 10), (10, 10))


def test_letterbox_places_content_and_pads() -> None:
    # A white 20x40 rectangle at (x=100, y=50) in a 200x400 frame; model input 100x100 -> scale 0.25.
    frame = torch.zeros(3, 200, 400, dtype=torch.uint8)
    frame[:, 50:70, 100:140] = 255
    x, lb = letterbox_resize(frame, (100, 100), InputTransform(pad_value=7.0))
    assert x.shape == (1, 3, 100, 100) and x.dtype == torch.float32
    assert (lb.scale_x, lb.offset_y) == (0.25, 25.0)
    assert float(x[0, 0, 0, 50]) == 7.0 and float(x[0, 0, 99, 50]) == 7.0  # padding rows, pad_value
    bright = (x[0, 0] > 127).nonzero()
    box = torch.tensor([[bright[:, 1].min(), bright[:, 0].min(), bright[:, 1].max() + 1, bright[:, 0].max() + 1]])
    # Mapped back, the bright region is where it was (to within a model pixel = 4 source pixels).
    torch.testing.assert_close(lb.to_source(box.float()), torch.tensor([[100.0, 50.0, 140.0, 70.0]]), atol=4.0, rtol=0)
    pts = torch.tensor([[10.0, 20.0, 390.0, 180.0]])
    torch.testing.assert_close(lb.to_source(lb.to_model(pts)), pts)


def test_uniform_image_stays_uniform_and_normalises() -> None:
    frame = torch.full((2, 3, 90, 160), 200, dtype=torch.uint8)
    transform = InputTransform(input_scale=1 / 255, mean=(0.5, 0.5, 0.5), std=(0.25, 0.5, 1.0), antialias=True)
    x, _ = letterbox_resize(frame, (90, 160), transform)
    v = 200 / 255
    torch.testing.assert_close(x[:, :, 5, 5], torch.tensor([[(v - 0.5) / 0.25, (v - 0.5) / 0.5, v - 0.5]] * 2))
    assert frame.max() == 200  # the caller's tensor is never modified


def test_bgr_fp16_and_stretch() -> None:
    frame = torch.zeros(3, 40, 80, dtype=torch.uint8)
    frame[0] = 255  # pure red
    x, lb = letterbox_resize(frame, (32, 32), InputTransform(mode="stretch", channel_order="bgr", dtype="fp16"))
    assert x.dtype == torch.float16 and x.shape == (1, 3, 32, 32)
    assert float(x[0, 2].min()) == 255.0 and float(x[0, 0].max()) == 0.0  # red is now the last channel
    assert (lb.scale_x, lb.scale_y) == (0.4, 0.8)
    nv12 = rgb_to_nv12(frame[None].expand(1, 3, 40, 80).contiguous())
    x12, _ = letterbox_resize_nv12(nv12, (20, 40), InputTransform(channel_order="bgr", dtype="fp16"))
    assert x12.dtype == torch.float16 and float(x12[0, 2].mean()) > 200 > 50 > float(x12[0, 0].mean())


def test_transform_rejects_zero_std_and_unknown_options() -> None:
    with pytest.raises(ValueError, match="std must not contain 0"):
        InputTransform(std=(1.0, 0.0, 1.0))
    with pytest.raises(ValueError, match="bgr"):
        InputTransform(bgr=True)


def test_rejects_non_rgb() -> None:
    with pytest.raises(ValueError, match="RGB"):
        letterbox_resize(torch.zeros(1, 60, 40, dtype=torch.uint8), (32, 32))


def test_normalize_in_place() -> None:
    x = torch.full((1, 3, 2, 2), 10.0)
    assert normalize(x, input_scale=0.1, mean=(1.0, 0.0, 0.0), std=(1.0, 2.0, 1.0)) is x
    assert x[0, :, 0, 0].tolist() == [0.0, 0.5, 1.0]


def test_uint8_input_is_resized_in_float() -> None:
    # No uint8-specialised kernel (the CPU has one that rounds to whole levels, CUDA has none): uint8
    # and float input take the same float32 path, so CPU and GPU compute the same thing.
    frame = torch.randint(0, 256, (2, 3, 90, 160), dtype=torch.uint8, generator=torch.Generator().manual_seed(3))
    from_uint8, _ = letterbox_resize(frame, (48, 48))
    from_float, _ = letterbox_resize(frame.float(), (48, 48))
    torch.testing.assert_close(from_uint8, from_float, atol=0, rtol=0)
    assert from_uint8.frac().abs().max() > 0  # not rounded to whole levels


def test_nv12_planes_are_not_rounded_before_conversion() -> None:
    nv12 = rgb_to_nv12(smooth_rgb(1, 96, 160))
    x, _ = letterbox_resize_nv12(nv12, (48, 80))
    assert x.frac().abs().max() > 0
    # The rounded path (uint8 planes, uint8 RGB) differs from the float one by at most its roundings:
    # 0.5 of Y times 255/219, 0.5 of Cb times 2(1 - Kb) 255/224 (blue, the largest) and 0.5 at the end.
    rounded = nv12_to_rgb(resize_nv12(nv12, (48, 80))).float()
    bound = 0.5 * 255 / 219 + 0.5 * 2 * (1 - 0.0722) * 255 / 224 + 0.5
    assert float((x - rounded).abs().max()) <= bound + 1e-3


def test_resize_nv12_planes() -> None:
    nv12 = rgb_to_nv12(smooth_rgb(2, 96, 160))
    small = resize_nv12(nv12, (48, 80))
    assert small.shape == (2, 72, 80) and small.dtype == torch.uint8
    expected = torch.nn.functional.interpolate(
        nv12[:, None, :96].float(), size=(48, 80), mode="bilinear", antialias=True
    )
    assert int((small[:, :48].float() - expected[:, 0]).abs().max()) <= 1
    with pytest.raises(ValueError, match="even"):
        resize_nv12(nv12, (47, 80))


@pytest.mark.parametrize("size", [(384, 640), (192, 320), (96, 96)])
def test_letterbox_nv12_matches_converting_first(size: tuple[int, int]) -> None:
    data = pytest.importorskip("skimage.data")
    photo = torch.from_numpy(data.astronaut()).permute(2, 0, 1)[None].float()
    rgb = torch.nn.functional.interpolate(photo, size=(360, 640), mode="bilinear", antialias=True)
    nv12 = rgb_to_nv12(rgb.round().to(torch.uint8)).expand(2, -1, -1)
    direct, lb_direct = letterbox_resize(nv12_to_rgb(nv12), size)
    planes, lb_planes = letterbox_resize_nv12(nv12, size)
    assert lb_direct == lb_planes and planes.shape == direct.shape
    # Shrinking before conversion moves chroma edges by up to a pixel: small on photographs.
    assert float((planes - direct).abs().mean()) < 1.5
    single, _ = letterbox_resize_nv12(nv12[0], size)
    torch.testing.assert_close(single[0], planes[0])


# Both devices resize (and convert NV12) in float32 with the same filter, steps and order; what is left
# is float32 summation order, about 1e-4 of a level on 0..255 values. A hundredth of a level is far
# below one uint8 step yet catches any rounding to whole levels (which shows up as 0.5 or more).
FP32_ATOL = 0.01
# An fp16 result is the fp32 one rounded once at the end: fp16 spacing is 0.125 between 128 and 256,
# so it is off by at most 0.0625 plus the fp32 difference above.
FP16_ATOL = 0.0625 + FP32_ATOL


@pytest.mark.gpu
def test_cuda_matches_cpu() -> None:
    frame = torch.randint(0, 256, (2, 3, 720, 1280), dtype=torch.uint8)
    cpu, lb_cpu = letterbox_resize(frame, (384, 640))
    gpu, lb_gpu = letterbox_resize(frame.cuda(), (384, 640))
    assert lb_cpu == lb_gpu and gpu.is_cuda
    torch.testing.assert_close(gpu.cpu(), cpu, atol=FP32_ATOL, rtol=0)
    half, _ = letterbox_resize(frame.cuda(), (384, 640), InputTransform(dtype="fp16"))
    assert half.dtype == torch.float16
    torch.testing.assert_close(half.float().cpu(), cpu, atol=FP16_ATOL, rtol=0)
    nv12 = rgb_to_nv12(smooth_rgb(2, 720, 1280))
    cpu12, _ = letterbox_resize_nv12(nv12, (384, 640))
    gpu12, _ = letterbox_resize_nv12(nv12.cuda(), (384, 640))
    assert gpu12.is_cuda and gpu12.dtype == torch.float32
    torch.testing.assert_close(gpu12.cpu(), cpu12, atol=FP32_ATOL, rtol=0)
    half12, _ = letterbox_resize_nv12(nv12.cuda(), (384, 640), InputTransform(dtype="fp16"))
    assert half12.is_cuda and half12.dtype == torch.float16
    torch.testing.assert_close(half12.float().cpu(), cpu12, atol=FP16_ATOL, rtol=0)
