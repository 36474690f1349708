"""Parallel segment encoding (`encoders: N`): one ordinary stream, every frame in order, a keyframe per segment."""

from __future__ import annotations

import itertools
import math
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from pydantic import ValidationError

from stages.decode import Decode
from stages.encode import Encode
from streamflow import Pipeline, PixelFormat
from streamflow.ops.color import rgb_to_nv12
from streamflow.video.encode import EncodeError, VideoWriter
from streamflow.video.pyav_encoder import EncoderSettings
from streamflow.video.segmented import SegmentedEncoder
from streamflow.video.synth import write_clip


def smooth_frames(count: int, height: int = 48, width: int = 80) -> list[torch.Tensor]:
    ys, xs = torch.meshgrid(torch.arange(height).float(), torch.arange(width).float(), indexing="ij")
    return [
        torch.stack(
            [
                128 + 90 * torch.sin((xs + 3 * i) / 9),
                128 + 90 * torch.cos((ys + 2 * i) / 7),
                128 + 60 * torch.sin((xs + ys + i) / 13),
            ]
        )
        .round()
        .to(torch.uint8)
        for i in range(count)
    ]


def packets_and_frames(path: Path) -> tuple[list[tuple[int, int, bool]], list[np.ndarray], list[Fraction]]:
    """(pts, dts, keyframe) of every packet in file order, the decoded RGB frames and their times."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        packets = [(p.pts, p.dts, p.is_keyframe) for p in container.demux(stream) if p.size]
    with av.open(str(path)) as container:
        decoded = list(container.decode(video=0))
    images = [f.to_ndarray(format="rgb24", src_colorspace="ITU709") for f in decoded]
    return packets, images, [f.pts * f.time_base for f in decoded]


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(((a.astype(np.float64) - b.astype(np.float64)) ** 2).mean())
    return math.inf if mse == 0 else 10 * math.log10(255.0**2 / mse)


@pytest.mark.parametrize(
    ("workers", "segment", "count", "suffix"), [(3, 7, 25, ".mp4"), (2, 5, 10, ".mkv"), (4, 30, 9, ".mp4")]
)
def test_every_frame_in_order_with_a_keyframe_per_segment(
    tmp_path: Path, workers: int, segment: int, count: int, suffix: str
) -> None:
    frames = smooth_frames(count)
    path = tmp_path / f"seg{suffix}"
    # 90 kHz clock, 3000 ticks a frame: timestamps are carried, not renumbered.
    settings = EncoderSettings(
        str(path), "mp4" if suffix == ".mp4" else "matroska", 80, 48, Fraction(30), Fraction(1, 90000), crf=16
    )
    encoder = SegmentedEncoder(settings, workers=workers, segment_frames=segment)
    for i, frame in enumerate(frames):
        encoder.encode(rgb_to_nv12(frame).numpy(), "nv12", 3000 * i)
    encoder.close()
    assert encoder.frames == count and encoder.segments == math.ceil(count / segment)

    packets, images, times = packets_and_frames(path)
    assert len(images) == count
    assert times == pytest.approx([i / 30 for i in range(count)], abs=1e-3)
    if suffix == ".mp4":  # Matroska stores no decode times
        dts = [d for _, d, _ in packets]
        assert all(b > a for a, b in itertools.pairwise(dts)), "decode times must rise strictly"
        assert all(d <= p for p, d, _ in packets)
    # Packets are in decode order; keyframes sit at the segment starts (x264 adds none within 30 frames).
    key_times = sorted(Fraction(p, 1) for p, _, key in packets if key)
    first_pts = min(p for p, _, _ in packets)
    tick = (max(p for p, _, _ in packets) - first_pts) / max(count - 1, 1)
    key_frames = [round((t - first_pts) / tick) for t in key_times]
    assert key_frames == list(range(0, count, segment))
    assert min(psnr(a, f.permute(1, 2, 0).numpy()) for a, f in zip(images, frames, strict=True)) > 30


def test_segmented_matches_a_single_encoder_within_a_segment(tmp_path: Path) -> None:
    """One segment holding the whole clip is exactly what one encoder writes."""
    frames = [rgb_to_nv12(f).numpy() for f in smooth_frames(12)]
    outputs = []
    for name, workers in (("one", 1), ("seg", 3)):
        path = tmp_path / f"{name}.mp4"
        writer_settings = EncoderSettings(str(path), "mp4", 80, 48, Fraction(30), Fraction(1, 30), crf=14)
        encoder = SegmentedEncoder(writer_settings, workers=workers, segment_frames=12)
        for i, frame in enumerate(frames):
            encoder.encode(frame, "nv12", i)
        encoder.close()
        outputs.append(packets_and_frames(path)[1])
    assert all(np.array_equal(a, b) for a, b in zip(*outputs, strict=True))


def test_video_writer_with_parallel_encoders_and_gpu_style_batches(tmp_path: Path) -> None:
    path = tmp_path / "w.mp4"
    frames = smooth_frames(20)
    with VideoWriter(path, fps=30, backend="cpu", encoders=3, segment_seconds=0.2) as writer:  # 6-frame segments
        writer.write_batch([(f, PixelFormat.RGB, i, Fraction(1, 30)) for i, f in enumerate(frames[:10])])
        writer.write_batch([(rgb_to_nv12(f), PixelFormat.NV12, 10 + i, None) for i, f in enumerate(frames[10:])])
    packets, images, times = packets_and_frames(path)
    assert len(images) == 20 and times == pytest.approx([i / 30 for i in range(20)], abs=1e-6)
    assert sum(key for _, _, key in packets) == 4  # frames 0, 6, 12, 18


def test_a_failing_segment_encoder_is_reported_and_the_file_closed(tmp_path: Path) -> None:
    path = tmp_path / "bad.mp4"
    writer = VideoWriter(path, fps=30, backend="cpu", encoders=2, segment_seconds=0.1, preset="no-such-preset")
    with pytest.raises(EncodeError) as caught:
        for frame in smooth_frames(30):
            writer.write(frame, PixelFormat.RGB)
        writer.close()
    assert str(path) in str(caught.value) and "\n" not in str(caught.value)
    writer.close()  # idempotent, no hang


def test_stage_round_trip_and_config(tmp_path: Path) -> None:
    clip = write_clip(tmp_path / "src.mp4", width=96, height=64, frames=45, crf=12)
    out = tmp_path / "out.mp4"
    Pipeline(
        [Decode(uri=str(clip), emit_batch=4), Encode(path=str(out), backend="cpu", encoders=3, segment_seconds=0.5)],
        device="cpu",
    ).run_sync()
    with av.open(str(clip)) as source:
        expected = [float(f.pts * f.time_base) for f in source.decode(video=0)]
    packets, images, times = packets_and_frames(out)
    assert len(images) == 45 and [float(t) for t in times] == pytest.approx(expected, abs=1e-3)
    assert sum(key for _, _, key in packets) == 3  # 15-frame segments at 30 fps
    with pytest.raises(ValidationError, match="use cpu_encoder: thread"):
        Encode(path="o.mp4", encoders=2, cpu_encoder="process")
    with pytest.raises(ValidationError):
        Encode(path="o.mp4", encoders=0)
