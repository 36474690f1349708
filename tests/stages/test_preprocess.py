"""`preprocess`: NV12/RGB frames and batches into a normalised NCHW model input."""

from __future__ import annotations

from fractions import Fraction

import pydantic
import pytest
import torch

from stages.preprocess import Preprocess
from streamflow.frame import Batch, Frame, PixelFormat, StreamInfo
from streamflow.ops.color import rgb_to_nv12
from streamflow.ops.resize import Letterbox
from streamflow.testing import run_stage


def rgb_frame(i: int, h: int = 72, w: int = 128) -> Frame:
    g = torch.Generator().manual_seed(i)
    image = torch.randint(0, 256, (3, h, w), dtype=torch.uint8, generator=g)
    return Frame(image=image, pts=i, time_base=Fraction(1, 30), index=i)


def nv12_frame(i: int, h: int = 72, w: int = 128, *, color_range: str = "limited") -> Frame:
    f = rgb_frame(i, h, w)
    info = StreamInfo(width=w, height=h, codec="h264", time_base=Fraction(1, 30), color_range=color_range)
    nv12 = rgb_to_nv12(f.image, full_range=color_range == "full")
    return Frame(image=nv12, pts=i, time_base=f.time_base, index=i, format=PixelFormat.NV12, info=info)


def test_single_rgb_frame_becomes_a_batch_with_letterbox() -> None:
    frame = rgb_frame(0)
    original = frame.image
    (out,) = run_stage(Preprocess(width=64, height=64), [frame])
    assert isinstance(out, Batch) and out.data is not None
    assert out.data.shape == (1, 3, 64, 64) and out.data.dtype == torch.float32
    assert out.frames[0].image is original  # frames keep their own images
    lb = out.frames[0].results["letterbox"]
    assert lb == Letterbox(0.5, 0.5, 0.0, 14.0, 128, 72)
    assert float(out.data[0, :, :14].abs().max()) == 0.0  # padding


def test_nv12_gives_the_same_input_as_rgb() -> None:
    rgb_out = run_stage(Preprocess(width=64, height=32), [rgb_frame(1)])[0]
    nv12_out = run_stage(Preprocess(width=64, height=32), [nv12_frame(1)])[0]
    assert isinstance(rgb_out, Batch) and isinstance(nv12_out, Batch)
    # 4:2:0 chroma subsampling costs detail on random pixels; the means agree closely.
    assert rgb_out.data is not None and nv12_out.data is not None
    assert float((rgb_out.data - nv12_out.data).mean(dim=(2, 3)).abs().max()) < 3.0


def test_full_range_comes_from_the_stream_info() -> None:
    limited = run_stage(Preprocess(width=64, height=32), [nv12_frame(2)])[0]
    full = run_stage(Preprocess(width=64, height=32), [nv12_frame(2, color_range="full")])[0]
    assert isinstance(limited, Batch) and isinstance(full, Batch)
    assert limited.data is not None and full.data is not None
    torch.testing.assert_close(limited.data, full.data, atol=6.0, rtol=0)


def test_batches_of_mixed_sizes_and_formats_keep_order() -> None:
    frames = [rgb_frame(0), nv12_frame(1, 48, 64), rgb_frame(2), rgb_frame(3, 100, 100)]
    (out,) = run_stage(Preprocess(width=64, height=64, dtype="fp16"), [Batch(frames)])
    assert isinstance(out, Batch) and out.data is not None
    assert out.data.shape == (4, 3, 64, 64) and out.data.dtype == torch.float16
    for i, frame in enumerate(frames):
        (alone,) = run_stage(Preprocess(width=64, height=64, dtype="fp16"), [frame])
        assert isinstance(alone, Batch) and alone.data is not None
        torch.testing.assert_close(out.data[i], alone.data[0])
    assert [f.results["letterbox"].width for f in out.frames] == [128, 64, 128, 100]


def test_runner_batching_and_normalisation_options() -> None:
    stage = Preprocess(width=32, height=32, mode="stretch", input_scale=1 / 255, mean=(0.5, 0.5, 0.5), batch_size=3)
    white = Frame(image=torch.full((3, 10, 20), 255, dtype=torch.uint8), pts=0, time_base=Fraction(1, 30))
    out = run_stage(stage, [white, rgb_frame(1), rgb_frame(2)])
    assert sum(len(b.frames) for b in out) == 3
    first = out[0]
    assert isinstance(first, Batch) and first.data is not None
    torch.testing.assert_close(first.data[0], torch.full((3, 32, 32), 0.5))


def test_config_validation() -> None:
    with pytest.raises(pydantic.ValidationError):
        Preprocess(std=(1.0, 0.0, 1.0))
    with pytest.raises(pydantic.ValidationError):
        Preprocess(widht=640)  # unknown option


def test_rejects_other_formats() -> None:
    frame = Frame(image=torch.zeros(1, 3, 4, 4), pts=0, time_base=Fraction(1, 30), format=PixelFormat.TENSOR)
    with pytest.raises(ValueError, match="expected nv12 or rgb"):
        run_stage(Preprocess(width=32, height=32), [frame])


@pytest.mark.gpu
def test_cuda_matches_cpu() -> None:
    frames = [nv12_frame(i, 720, 1280) for i in range(4)]
    (cpu,) = run_stage(Preprocess(), [Batch(frames)])
    (gpu,) = run_stage(Preprocess(), [Batch([nv12_frame(i, 720, 1280) for i in range(4)])], device="cuda")
    assert isinstance(cpu, Batch) and isinstance(gpu, Batch) and gpu.data is not None and cpu.data is not None
    assert gpu.data.is_cuda
    # Same float32 steps in the same order on both devices (planes resized, then converted, never
    # rounded): only summation order differs, ~1e-4 of a level even after the colour matrix's gain
    # of about 2. A hundredth of a level still catches any rounding to whole levels.
    torch.testing.assert_close(gpu.data.cpu(), cpu.data, atol=0.01, rtol=0)
