"""NV12 <-> RGB conversion: known values, round trips, agreement with PyAV/FFmpeg, CPU == CUDA."""

from __future__ import annotations

import math
from pathlib import Path

import av
import numpy as np
import pytest
import torch

from streamflow.ops.color import nv12_to_rgb, nv12_to_yuv, rgb_to_nv12, yuv420_to_nv12
from streamflow.video.synth import pattern_frame, write_clip


def psnr(a: np.ndarray | torch.Tensor, b: np.ndarray | torch.Tensor) -> float:
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    mse = float(((a - b) ** 2).mean())
    return math.inf if mse == 0 else 10 * math.log10(255.0**2 / mse)


def smooth_rgb(height: int = 48, width: int = 64) -> torch.Tensor:
    return torch.from_numpy(pattern_frame(0, width, height)).permute(2, 0, 1).contiguous()


@pytest.mark.parametrize(
    ("matrix", "full_range", "black_y", "white_y"),
    [("bt709", False, 16, 235), ("bt601", False, 16, 235), ("bt709", True, 0, 255), ("bt601", True, 0, 255)],
)
def test_black_white_and_grey_map_to_the_range_ends(matrix: str, full_range: bool, black_y: int, white_y: int) -> None:
    for value, expected_y in ((0, black_y), (255, white_y)):
        rgb = torch.full((3, 2, 4), value, dtype=torch.uint8)
        nv12 = rgb_to_nv12(rgb, matrix=matrix, full_range=full_range)
        assert nv12.shape == (3, 4)
        assert nv12[:2].unique().tolist() == [expected_y]
        assert nv12[2:].unique().tolist() == [128]  # neutral chroma
        assert nv12_to_rgb(nv12, matrix=matrix, full_range=full_range).unique().tolist() == [value]


def test_primary_red_uses_the_matrix() -> None:
    rgb = torch.zeros(3, 2, 2, dtype=torch.uint8)
    rgb[0] = 255
    # Limited-range Y of pure red: 16 + 219 * Kr.
    assert int(rgb_to_nv12(rgb, matrix="bt709")[0, 0]) == round(16 + 219 * 0.2126)
    assert int(rgb_to_nv12(rgb, matrix="bt601")[0, 0]) == round(16 + 219 * 0.299)
    back = nv12_to_rgb(rgb_to_nv12(rgb, matrix="bt601"), matrix="bt601")
    assert (back.int() - rgb.int()).abs().max() <= 2


@pytest.mark.parametrize("matrix", ["bt601", "bt709"])
@pytest.mark.parametrize("full_range", [False, True])
def test_round_trip_is_close(matrix: str, full_range: bool) -> None:
    rgb = smooth_rgb()
    back = nv12_to_rgb(rgb_to_nv12(rgb, matrix=matrix, full_range=full_range), matrix=matrix, full_range=full_range)
    assert back.shape == rgb.shape and back.dtype == torch.uint8
    assert psnr(back, rgb) >= 30  # chroma is subsampled 2x2, so sharp colour edges lose some


def test_batch_dimensions_are_kept() -> None:
    rgb = torch.stack([smooth_rgb(), smooth_rgb().flip(-1)])
    nv12 = rgb_to_nv12(rgb)
    assert nv12.shape == (2, 72, 64)
    assert torch.equal(nv12[1], rgb_to_nv12(rgb[1]))
    assert torch.equal(nv12_to_rgb(nv12)[0], nv12_to_rgb(nv12[0]))


def test_split_and_pack_planes() -> None:
    y = torch.arange(16, dtype=torch.uint8).reshape(4, 4)
    u = torch.tensor([[100, 101], [102, 103]], dtype=torch.uint8)
    v = u + 50
    nv12 = yuv420_to_nv12(y, u, v)
    assert nv12[4].tolist() == [100, 150, 101, 151]
    y2, u2, v2 = nv12_to_yuv(nv12)
    assert torch.equal(y2, y) and torch.equal(u2, u) and torch.equal(v2, v)


@pytest.mark.parametrize("shape", [(5, 4), (6, 3), (7, 4)])
def test_bad_nv12_shapes_are_rejected(shape: tuple[int, int]) -> None:
    with pytest.raises(ValueError, match="NV12"):
        nv12_to_rgb(torch.zeros(shape, dtype=torch.uint8))


def test_bad_inputs_are_rejected() -> None:
    with pytest.raises(ValueError, match="uint8"):
        nv12_to_rgb(torch.zeros(6, 4))
    with pytest.raises(ValueError, match="even"):
        rgb_to_nv12(torch.zeros(3, 3, 4, dtype=torch.uint8))
    with pytest.raises(ValueError, match="colour matrix"):
        nv12_to_rgb(torch.zeros(6, 4, dtype=torch.uint8), matrix="bt2020")


def _pyav_nv12_and_rgb(path: Path) -> list[tuple[torch.Tensor, np.ndarray]]:
    out = []
    with av.open(str(path)) as container:
        for frame in container.decode(video=0):
            nv12 = torch.from_numpy(np.ascontiguousarray(frame.reformat(format="nv12").to_ndarray()))
            rgb = frame.to_ndarray(format="rgb24", src_colorspace="ITU709", src_color_range="MPEG")
            out.append((nv12, rgb.transpose(2, 0, 1)))
    return out


@pytest.mark.parametrize("codec", ["h264", "hevc"])
def test_matches_pyav_conversion_of_a_decoded_clip(tmp_path: Path, codec: str) -> None:
    clip = write_clip(
        tmp_path / f"c.{'mp4' if codec == 'h264' else 'mkv'}", width=320, height=240, frames=4, codec=codec
    )
    pairs = _pyav_nv12_and_rgb(clip)
    assert len(pairs) == 4
    for nv12, reference in pairs:
        assert psnr(nv12_to_rgb(nv12, matrix="bt709"), reference) >= 40


@pytest.mark.gpu
def test_cuda_matches_cpu() -> None:
    rgb = torch.stack([smooth_rgb(), smooth_rgb().flip(-2)])
    nv12 = rgb_to_nv12(rgb)
    assert torch.equal(rgb_to_nv12(rgb.cuda()).cpu(), nv12)
    on_gpu = nv12_to_rgb(nv12.cuda(), matrix="bt601", full_range=True)
    assert on_gpu.device.type == "cuda"
    # Float rounding may differ by one step between devices.
    assert (on_gpu.cpu().int() - nv12_to_rgb(nv12, matrix="bt601", full_range=True).int()).abs().max() <= 1


def test_linear_chroma_follows_smooth_colour_closer_and_keeps_flat_colour_exact() -> None:
    x = torch.linspace(0, 1, 40)
    smooth = torch.stack(
        [x[None].expand(32, 40) * 200 + 20, x[:32, None].expand(32, 40) * 200 + 20, (x[None] * x[:32, None]) * 200 + 20]
    )
    smooth = smooth.round().to(torch.uint8)
    nv12 = rgb_to_nv12(smooth)
    nearest = nv12_to_rgb(nv12)
    linear = nv12_to_rgb(nv12, chroma="linear")
    assert linear.shape == nearest.shape == smooth.shape
    error = {name: (out.float() - smooth.float()).abs().mean().item() for name, out in (("n", nearest), ("l", linear))}
    assert error["l"] < 0.9 * error["n"], error
    assert torch.equal(nv12_to_rgb(nv12[None], chroma="linear")[0], linear), "batched as single"
    flat = torch.full((3, 8, 8), 90, dtype=torch.uint8)
    flat[0] = 200
    assert torch.equal(nv12_to_rgb(rgb_to_nv12(flat), chroma="linear"), nv12_to_rgb(rgb_to_nv12(flat)))
    with pytest.raises(ValueError, match="chroma"):
        nv12_to_rgb(nv12, chroma="cubic")
