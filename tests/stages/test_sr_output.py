"""The `sr_output` stage: clamp, uint8, RGB or NV12 images of the new size, per frame."""

from __future__ import annotations

from fractions import Fraction

import pytest
import torch

from stages.sr_output import SuperResolutionOutput
from streamflow.frame import Batch, Frame, PixelFormat, StreamInfo
from streamflow.ops.color import rgb_to_nv12
from streamflow.testing import make_frames, run_stage


def _batch(output: torch.Tensor, *, info: StreamInfo | None = None) -> Batch:
    frames = make_frames(len(output), height=output.shape[-2] // 2, width=output.shape[-1] // 2)
    for f in frames:
        f.info = info
    return Batch(frames, data=torch.zeros(len(output), 15, 2, 2), results={"hr": output})


def test_rgb_output_clamps_rounds_and_replaces_images() -> None:
    values = torch.tensor([-0.5, 0.0, 0.5, 1.0, 1.5, 100 / 255 + 0.4 / 255, 100 / 255 + 0.6 / 255, 1 / 510])
    output = values.view(1, 1, 1, 8).expand(2, 3, 4, 8).clone()
    output[1] = 1.0 - output[1]
    info = StreamInfo(width=4, height=2, codec="h264", time_base=Fraction(1, 30))
    (out,) = run_stage(SuperResolutionOutput(result="hr"), [_batch(output, info=info)])
    assert isinstance(out, Batch)
    assert [f.pts for f in out.frames] == [0, 1]
    first = out.frames[0]
    assert first.format is PixelFormat.RGB and first.image.dtype == torch.uint8
    assert first.image.shape == (3, 4, 8)
    assert first.image[0, 0].tolist() == [0, 0, 128, 255, 255, 100, 101, 1]
    expected_second = (output[1].clamp(0, 1) * 255 + 0.5).floor().to(torch.uint8)  # halves round up
    assert torch.equal(out.frames[1].image, expected_second)
    assert first.info is not None and (first.info.width, first.info.height) == (8, 4)
    assert "hr" not in out.results and out.data is None  # the large tensors are released


def test_nv12_output_matches_rgb_to_nv12() -> None:
    output = torch.rand(3, 3, 8, 12)
    (out,) = run_stage(SuperResolutionOutput(result="hr", format="nv12"), [_batch(output)])
    for i, frame in enumerate(out.frames):
        assert frame.format is PixelFormat.NV12
        assert frame.image.shape == (12, 12)
        rgb = (output[i] * 255 + 0.5).to(torch.uint8)
        assert torch.equal(frame.image, rgb_to_nv12(rgb))


def test_default_result_is_the_only_tensor_and_keep_output() -> None:
    output = torch.rand(1, 3, 4, 4)
    (out,) = run_stage(SuperResolutionOutput(keep_output=True), [_batch(output)])
    assert out.results["hr"] is not None
    assert out.frames[0].image.shape == (3, 4, 4)


def test_single_frame_item() -> None:
    frame = make_frames(1)[0]
    frame.results["hr"] = torch.rand(1, 3, 8, 8)
    (out,) = run_stage(SuperResolutionOutput(result="hr"), [frame])
    assert isinstance(out, Frame) and out.image.shape == (3, 8, 8)


def test_errors_name_the_problem() -> None:
    with pytest.raises(KeyError, match="no result named 'missing'"):
        run_stage(SuperResolutionOutput(result="missing"), [_batch(torch.rand(1, 3, 4, 4))])
    with pytest.raises(KeyError, match="set `result`"):
        batch = _batch(torch.rand(1, 3, 4, 4))
        batch.results["other"] = torch.zeros(1)
        run_stage(SuperResolutionOutput(), [batch])


def test_wrong_frame_count() -> None:
    batch = _batch(torch.rand(2, 3, 4, 4))
    batch.frames = batch.frames[:1]
    with pytest.raises(ValueError, match="one RGB image per frame"):
        run_stage(SuperResolutionOutput(result="hr"), [batch])


def test_three_frames_per_row_nhwc_in_order_with_the_stream_end_dropped() -> None:
    frames = make_frames(4, height=2, width=2)
    # Row r, frame slot k holds the value (3 * r + k) / 255 in every pixel; the last row serves one frame.
    values = torch.arange(6, dtype=torch.float32).div(255).reshape(2, 3, 1)
    output = values.repeat_interleave(3, dim=1).reshape(2, 1, 1, 9).expand(2, 4, 4, 9)
    batch = Batch(frames, results={"hr": output, "frames_per_row": [3, 1]})
    (out,) = run_stage(SuperResolutionOutput(result="hr", frames_out=3, layout="nhwc"), [batch])
    assert [int(f.image[0, 0, 0]) for f in out.frames] == [0, 1, 2, 3]
    assert all(f.image.shape == (3, 4, 4) for f in out.frames)
    assert out.results == {}


def test_rows_that_dont_match_frames_out_fail_clearly() -> None:
    batch = Batch(make_frames(3, height=2, width=2), results={"hr": torch.rand(1, 4, 4, 6), "frames_per_row": [3]})
    with pytest.raises(ValueError, match=r"expected \(B, H, W, 3M\) with B = 1 rows and M = 3"):
        run_stage(SuperResolutionOutput(result="hr", frames_out=3, layout="nhwc"), [batch])
