"""Parallel segment encoding (`encoders: N`, in threads or child processes): one ordinary stream, every frame
in order, a keyframe per segment."""

from __future__ import annotations

import itertools
import math
import os
import signal
import subprocess
import sys
import textwrap
import time
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
from streamflow.video.pyav_encoder import EncoderSettings, shared_dir
from streamflow.video.segmented import ProcessSegmentedEncoder, SegmentedEncoder
from streamflow.video.synth import write_clip
from support.pictures import assert_close_to_source, psnr


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


def encode_segments(
    kind: str, settings: EncoderSettings, frames: list[np.ndarray], pts: list[int], *, workers: int, segment: int
) -> int:
    """Encode NV12 frames with `SegmentedEncoder` ("thread") or `ProcessSegmentedEncoder` ("process").

    Returns the number of segments.
    """
    if kind == "thread":
        encoder = SegmentedEncoder(settings, workers=workers, segment_frames=segment)
        for frame, stamp in zip(frames, pts, strict=True):
            encoder.encode(frame, "nv12", stamp)
        encoder.close()
        assert encoder.frames == len(frames)
        return encoder.segments
    children = ProcessSegmentedEncoder(settings, fmt="nv12", workers=workers, segment_frames=segment, slots=2)
    for start in range(0, len(frames), 3):  # batches of 3, as a GPU writer hands them over
        staged = []
        for frame, stamp in zip(frames[start : start + 3], pts[start : start + 3], strict=True):
            slot = children.acquire(wait=False)
            if slot is None:  # that child's ring is full: hand over what is staged first (as VideoWriter does)
                children.submit(staged)
                staged, slot = [], children.acquire()
            assert slot is not None
            children.slot(slot)[:] = frame
            staged.append((slot, stamp))
        children.submit(staged)
    children.close()
    assert children.frames == len(frames)
    return children.segments


def leftover_shared_files() -> list[str]:
    return [name for name in os.listdir(shared_dir()) if name.startswith("streamflow-")]


@pytest.mark.parametrize("kind", ["thread", "process"])
@pytest.mark.parametrize(
    ("workers", "segment", "count", "suffix"), [(3, 7, 25, ".mp4"), (2, 5, 10, ".mkv"), (4, 30, 9, ".mp4")]
)
def test_every_frame_in_order_with_a_keyframe_per_segment(
    tmp_path: Path, kind: str, workers: int, segment: int, count: int, suffix: str
) -> None:
    frames = smooth_frames(count)
    path = tmp_path / f"seg{suffix}"
    # 90 kHz clock, 3000 ticks a frame: timestamps are carried, not renumbered.
    settings = EncoderSettings(
        str(path), "mp4" if suffix == ".mp4" else "matroska", 80, 48, Fraction(30), Fraction(1, 90000), crf=16
    )
    nv12 = [rgb_to_nv12(frame).numpy() for frame in frames]
    segments = encode_segments(kind, settings, nv12, [3000 * i for i in range(count)], workers=workers, segment=segment)
    assert segments == math.ceil(count / segment)
    assert leftover_shared_files() == []

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
    """One segment holding the whole clip pictures the clip as faithfully as one encoder does."""
    sources = smooth_frames(12)
    frames = [rgb_to_nv12(f).numpy() for f in sources]
    outputs = []
    for name, workers in (("one", 1), ("seg", 3)):
        path = tmp_path / f"{name}.mp4"
        writer_settings = EncoderSettings(str(path), "mp4", 80, 48, Fraction(30), Fraction(1, 30), crf=14)
        encoder = SegmentedEncoder(writer_settings, workers=workers, segment_frames=12)
        for i, frame in enumerate(frames):
            encoder.encode(frame, "nv12", i)
        encoder.close()
        outputs.append(packets_and_frames(path)[1])
    assert len(outputs[0]) == len(outputs[1]) == 12
    assert_close_to_source(outputs, sources)


def test_child_processes_write_the_same_stream_as_threads(tmp_path: Path) -> None:
    """Same cut, same settings: the same frame times and keyframes, and equally faithful pictures.

    Not byte for byte: x264's output may differ between a thread and a child process (thread count, SIMD).
    """
    sources = smooth_frames(23)
    frames = [rgb_to_nv12(f).numpy() for f in sources]
    streams, pictures = [], []
    for kind in ("thread", "process"):
        path = tmp_path / f"{kind}.mp4"
        settings = EncoderSettings(str(path), "mp4", 80, 48, Fraction(30), Fraction(1, 30), crf=18, pix_fmt="nv12")
        encode_segments(kind, settings, frames, list(range(23)), workers=3, segment=4)
        packets, images, _ = packets_and_frames(path)
        # Frame order within a GOP (B-frames) is x264's choice: compare presentation times and keyframes.
        streams.append(sorted((pts, key) for pts, _, key in packets))
        pictures.append(images)
    assert len(streams[0]) == 23 and streams[0] == streams[1]
    assert_close_to_source(pictures, sources)


@pytest.mark.parametrize("cpu_encoder", ["thread", "process"])
def test_video_writer_with_parallel_encoders_and_gpu_style_batches(tmp_path: Path, cpu_encoder: str) -> None:
    path = tmp_path / "w.mp4"
    frames = smooth_frames(20)
    # 6-frame segments
    with VideoWriter(
        path, fps=30, backend="cpu", encoders=3, segment_seconds=0.2, cpu_encoder=cpu_encoder, slots=2
    ) as writer:
        writer.write_batch([(f, PixelFormat.RGB, i, Fraction(1, 30)) for i, f in enumerate(frames[:10])])
        writer.write_batch([(rgb_to_nv12(f), PixelFormat.NV12, 10 + i, None) for i, f in enumerate(frames[10:])])
    packets, images, times = packets_and_frames(path)
    assert len(images) == 20 and times == pytest.approx([i / 30 for i in range(20)], abs=1e-6)
    assert sum(key for _, _, key in packets) == 4  # frames 0, 6, 12, 18


@pytest.mark.parametrize("cpu_encoder", ["thread", "process"])
def test_a_failing_segment_encoder_is_reported_and_the_file_closed(tmp_path: Path, cpu_encoder: str) -> None:
    path = tmp_path / "bad.mp4"
    writer = VideoWriter(
        path, fps=30, backend="cpu", encoders=2, segment_seconds=0.1, preset="no-such-preset", cpu_encoder=cpu_encoder
    )
    with pytest.raises(EncodeError) as caught:
        for frame in smooth_frames(30):
            writer.write(frame, PixelFormat.RGB)
        writer.close()
    assert str(path) in str(caught.value) and "\n" not in str(caught.value)
    writer.close()  # idempotent, no hang
    assert leftover_shared_files() == []


def test_segment_children_clean_up_when_the_parent_dies(tmp_path: Path) -> None:
    """A parent killed mid-stream: its children see their input end, drop their work and remove the segment folder."""
    script = textwrap.dedent(
        f"""
        import os, signal, sys
        from fractions import Fraction
        import numpy as np
        from streamflow.video.pyav_encoder import EncoderSettings
        from streamflow.video.segmented import ProcessSegmentedEncoder
        path = {str(tmp_path / "o.mp4")!r}
        settings = EncoderSettings(path, "mp4", 64, 48, Fraction(30), Fraction(1, 30), pix_fmt="nv12")
        encoder = ProcessSegmentedEncoder(settings, fmt="nv12", workers=2, segment_frames=3, slots=2)
        for i in range(10):
            slot = encoder.acquire()
            encoder.slot(slot)[:] = 16 * i
            encoder.submit([(slot, i)])
        print(" ".join(str(c._child.pid) for c in encoder._children), flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
        """
    )
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=False)
    assert run.returncode == -signal.SIGKILL, run.stderr
    children = [int(pid) for pid in run.stdout.split()]
    assert len(children) == 2
    deadline = time.monotonic() + 60
    while any(Path(f"/proc/{pid}").exists() for pid in children) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(Path(f"/proc/{pid}").exists() for pid in children), "children outlived their parent"
    assert leftover_shared_files() == []


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
    assert Encode(path="o.mp4", encoders=2, cpu_encoder="process").config.encoders == 2
    with pytest.raises(ValidationError):
        Encode(path="o.mp4", encoders=0)


def test_the_picture_check_still_catches_a_frame_out_of_order_or_swapped_planes() -> None:
    """The tolerance `assert_close_to_source` allows encoders still fails the bugs it is there for."""
    sources = smooth_frames(6)
    noise = np.random.default_rng(0)
    # What an encoder might give back: each pixel off by up to 3 grey levels (about 40 dB).
    decoded = [
        np.clip(f.permute(1, 2, 0).numpy().astype(np.int16) + noise.integers(-3, 4, (48, 80, 3)), 0, 255).astype(
            np.uint8
        )
        for f in sources
    ]
    assert_close_to_source([decoded, decoded], sources)
    shifted = decoded[1:] + decoded[-1:]
    with pytest.raises(AssertionError):
        assert_close_to_source([decoded, shifted], sources)
    with pytest.raises(AssertionError):
        assert_close_to_source([[image[..., ::-1] for image in decoded]], sources)
