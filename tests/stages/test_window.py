"""The `window` stage: one stacked input per frame, exact frame count and pts, edge padding."""

from __future__ import annotations

from fractions import Fraction

import pytest
import torch

from stages.window import Window
from streamflow.frame import Batch, Frame, PixelFormat, StreamInfo
from streamflow.ops.color import nv12_to_rgb, rgb_to_nv12
from streamflow.testing import make_frames, run_stage

N = 5


def _batches(items: list[Frame | Batch]) -> list[Batch]:
    batches = [item for item in items if isinstance(item, Batch) and item.data is not None]
    assert len(batches) == len(items), "window emits only Batches with data"
    return batches


def _data(item: Frame | Batch) -> torch.Tensor:
    assert isinstance(item, Batch) and item.data is not None
    return item.data


def _frames_out(items: list[Frame | Batch]) -> list[Frame]:
    return [frame for item in _batches(items) for frame in item.frames]


def nv12_frames(images: list[torch.Tensor], info: StreamInfo) -> list[Frame]:
    """NV12 frames of `images`, numbered from 0."""
    return [
        Frame(image, pts=i, time_base=Fraction(1, 30), format=PixelFormat.NV12, info=info)
        for i, image in enumerate(images)
    ]


def _window_indices(batch_data: torch.Tensor, size: int) -> list[list[int]]:
    """Which input frame sits in each slot: `make_frames` fills frame i with the value i."""
    values = (batch_data[:, :, 0, 0] * 255).round().long()  # (B, 3 * size)
    assert torch.equal(values[:, 0::3], values[:, 1::3]) and torch.equal(values[:, 0::3], values[:, 2::3])
    return values[:, 0::3].tolist()


def _expected(index: int, length: int, size: int) -> list[int]:
    before = (size - 1) // 2
    return [min(max(index - before + k, 0), length - 1) for k in range(size)]


@pytest.mark.parametrize("length", [1, 3, N - 1, N, 2 * N + 1])
def test_frame_count_pts_and_padding(length: int) -> None:
    out = run_stage(Window(size=N), make_frames(length, height=6, width=8))
    frames = _frames_out(out)
    assert [f.pts for f in frames] == list(range(length))
    assert [f.index for f in frames] == list(range(length))
    for i, item in enumerate(_batches(out)):
        assert item.data is not None
        assert item.data.shape == (1, 3 * N, 6, 8)
        assert item.data.dtype == torch.float32
        assert _window_indices(item.data, N) == [_expected(i, length, N)]


@pytest.mark.parametrize("size", [1, 3, 4])
def test_other_window_sizes(size: int) -> None:
    length = 6
    out = run_stage(Window(size=size), make_frames(length))
    assert len(_frames_out(out)) == length
    got = [row for item in out for row in _window_indices(_data(item), size)]
    assert got == [_expected(i, length, size) for i in range(length)]
    if size == 1:
        assert got == [[i] for i in range(length)]


@pytest.mark.parametrize("length", [1, 3, 2 * N + 1])
def test_emit_batch_groups_frames_in_order(length: int) -> None:
    out = run_stage(Window(size=N, emit_batch=4), make_frames(length))
    sizes = [len(item) for item in _batches(out)]
    assert sum(sizes) == length and all(s == 4 for s in sizes[:-1]) and 1 <= sizes[-1] <= 4
    assert [f.pts for f in _frames_out(out)] == list(range(length))
    got = [row for item in out for row in _window_indices(_data(item), N)]
    assert got == [_expected(i, length, N) for i in range(length)]


def test_sources_are_windowed_separately() -> None:
    a = make_frames(4, source_id="a")
    b = make_frames(3, source_id="b")
    for f in b:
        f.image = f.image + 100  # tell the sources apart in the stacked data
    interleaved = [a[0], b[0], a[1], b[1], a[2], b[2], a[3]]
    out = run_stage(Window(size=3), interleaved)
    frames = _frames_out(out)
    assert [f.pts for f in frames if f.source_id == "a"] == [0, 1, 2, 3]
    assert [f.pts for f in frames if f.source_id == "b"] == [0, 1, 2]
    for item in out:
        rows = _window_indices(_data(item), 3)
        offset = 100 if item.frames[0].source_id == "b" else 0
        length = 3 if offset else 4
        assert rows == [[v + offset for v in _expected(item.frames[0].pts, length, 3)]]  # type: ignore[arg-type]


def test_resolution_change_starts_a_new_sequence() -> None:
    small = make_frames(3, height=4, width=4)
    large = make_frames(6, height=8, width=6)[3:]
    out = run_stage(Window(size=N), small + large)
    assert [f.pts for f in _frames_out(out)] == list(range(6))
    shapes = [tuple(_data(item).shape[-2:]) for item in out]
    assert shapes == [(4, 4)] * 3 + [(8, 6)] * 3
    # The first frame after the change is padded with itself, never with a frame of the old size.
    assert _window_indices(_data(out[3]), N) == [[3, 3, 3, 4, 5]]
    assert _window_indices(_data(out[2]), N) == [[0, 1, 2, 2, 2]]


def test_nv12_input_is_converted_to_rgb() -> None:
    rgb = torch.randint(0, 256, (3, 8, 8), dtype=torch.uint8)
    rgb = rgb.repeat_interleave(2, 1).repeat_interleave(2, 2)  # flat 2x2 blocks survive 4:2:0 chroma
    info = StreamInfo(width=16, height=16, codec="h264", time_base=Fraction(1, 30))
    frames = [
        Frame(rgb_to_nv12(rgb), pts=i, time_base=Fraction(1, 30), format=PixelFormat.NV12, info=info) for i in range(2)
    ]
    out = run_stage(Window(size=3), frames)
    data = _data(out[0])
    assert data.shape == (1, 9, 16, 16)
    assert (data[0, 3:6] * 255 - rgb.float()).abs().max() <= 3  # YUV rounding only


def test_nv12_batches_convert_in_one_call_with_the_same_result() -> None:
    """A decoder Batch of NV12 frames is converted in one batched call: same windows as frame by frame."""
    info = StreamInfo(width=16, height=12, codec="h264", time_base=Fraction(1, 30))
    images = [rgb_to_nv12(torch.randint(0, 256, (3, 12, 16), dtype=torch.uint8)) for _ in range(7)]

    one_by_one = run_stage(Window(size=3, emit_batch=2), nv12_frames(images, info))
    listed = nv12_frames(images, info)
    batched = run_stage(Window(size=3, emit_batch=2), [Batch(listed[:4]), Batch(listed[4:])])
    assert [f.pts for f in _frames_out(batched)] == list(range(7))
    assert len(one_by_one) == len(batched)
    for a, b in zip(one_by_one, batched, strict=True):
        assert torch.equal(_data(a), _data(b))


def test_linear_chroma_reaches_the_conversion_frame_by_frame_and_batched() -> None:
    info = StreamInfo(width=16, height=12, codec="h264", time_base=Fraction(1, 30))
    images = [rgb_to_nv12(torch.randint(0, 256, (3, 12, 16), dtype=torch.uint8)) for _ in range(3)]

    expected = nv12_to_rgb(images[1], chroma="linear").float() / 255
    assert not torch.equal(expected, nv12_to_rgb(images[1]).float() / 255), "random colour: the two differ"
    single = run_stage(Window(size=3, chroma="linear"), nv12_frames(images, info))
    batched = run_stage(Window(size=3, chroma="linear"), [Batch(nv12_frames(images, info))])
    for out in (single, batched):
        assert len(out) == 3
        assert torch.allclose(_data(out[1])[0, 3:6], expected, atol=1e-6), "the second window's centre frame"


def test_rejects_wrong_input() -> None:
    bad = Frame(torch.zeros(4, 4, dtype=torch.uint8), pts=0, time_base=Fraction(1, 30))
    with pytest.raises(ValueError, match="uint8 RGB"):
        run_stage(Window(size=3), [bad])


def test_config_validation() -> None:
    with pytest.raises(ValueError):
        Window(size=0)
    with pytest.raises(ValueError):
        Window(emit_batch=0)


# -- N frames in, M frames out (BMF's SR engine: 7 in, 3 out, NHWC) ------------------------------------


def _served_expected(length: int, size: int, step: int) -> list[tuple[list[int], list[int]]]:
    """Per model input: (frames it serves, input frame in each slot), written out from the rule."""
    before = (size - step) // 2
    rows = []
    for first in range(0, length, step):
        served = list(range(first, min(first + step, length)))
        rows.append((served, [min(max(first - before + k, 0), length - 1) for k in range(size)]))
    return rows


@pytest.mark.parametrize("length", [1, 2, 3, 7, 8, 10])
@pytest.mark.parametrize("emit_batch", [1, 2])
def test_seven_in_three_out_nhwc_serves_every_frame_once(length: int, emit_batch: int) -> None:
    out = _batches(run_stage(Window(size=7, frames_out=3, layout="nhwc", emit_batch=emit_batch), make_frames(length)))
    assert [f.pts for f in _frames_out(out)] == list(range(length))
    rows = []
    for batch in out:
        data = _data(batch)
        assert data.shape[1:] == (4, 4, 21) and data.dtype == torch.float32
        counts = batch.results["frames_per_row"]
        assert len(counts) == data.shape[0] <= emit_batch and sum(counts) == len(batch.frames)
        slots = _window_indices(data.permute(0, 3, 1, 2), 7)
        served = iter(batch.frames)
        rows += [([next(served).index for _ in range(c)], s) for c, s in zip(counts, slots, strict=True)]
    assert rows == _served_expected(length, 7, 3)


def test_uint8_input_keeps_pixel_values() -> None:
    (batch,) = _batches(run_stage(Window(size=3, frames_out=3, dtype="uint8"), make_frames(3)))
    data = _data(batch)
    assert data.dtype == torch.uint8 and data.shape == (1, 9, 4, 4)
    assert data[0, :, 0, 0].tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]


def test_frames_out_larger_than_the_window_is_a_config_error() -> None:
    with pytest.raises(ValueError, match="frames_out 4 must be at most size 3"):
        Window(size=3, frames_out=4)


def test_one_frame_out_sets_no_row_counts() -> None:
    (batch,) = _batches(run_stage(Window(size=3, emit_batch=2), make_frames(2)))
    assert "frames_per_row" not in batch.results


def test_seven_in_three_out_per_source_and_across_a_resolution_change() -> None:
    a = make_frames(5, source_id="a")
    b = make_frames(4, source_id="b")
    small, large = make_frames(2, height=4, width=4), make_frames(4, height=8, width=6)[2:]
    for f in small + large:
        f.source_id = "c"
    out = _batches(run_stage(Window(size=7, frames_out=3), [*a, *b, *small, *large]))
    for source, length in (("a", 5), ("b", 4)):
        assert [f.pts for f in _frames_out(out) if f.source_id == source] == list(range(length))
    # Source c: the old size's 2 frames are one input, the new size's 2 another; no input mixes sizes.
    c = [item for item in out if item.frames[0].source_id == "c"]
    assert [[f.pts for f in item.frames] for item in c] == [[0, 1], [2, 3]]
    assert [tuple(_data(item).shape[-2:]) for item in c] == [(4, 4), (8, 6)]
    assert [item.results["frames_per_row"] for item in c] == [[2], [2]]
