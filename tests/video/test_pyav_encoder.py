"""CPU encoding in a child process (`cpu_encoder: process`) against the same encoder in this thread."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
import torch

from streamflow.frame import PixelFormat
from streamflow.ops.color import rgb_to_nv12
from streamflow.video.encode import CpuEncoderMode, EncodeError, VideoWriter
from streamflow.video.encoders.process import ProcessEncoder
from streamflow.video.encoders.thread import ThreadEncoder
from streamflow.video.pyav_encoder import EncoderProcess, EncoderSettings, PyAVEncoder
from streamflow.video.segmented import ProcessSegmentedEncoder
from support.pictures import assert_close_to_source, psnr

REPO = Path(__file__).resolve().parents[2]


def moving_frames(count: int, height: int = 64, width: int = 96) -> list[torch.Tensor]:
    """Smooth RGB (3, H, W) uint8 frames that move 3 px a frame, so every frame differs."""
    ys, xs = torch.meshgrid(torch.arange(height).float(), torch.arange(width).float(), indexing="ij")
    frames = []
    for i in range(count):
        r = 128 + 90 * torch.sin((xs + 3 * i) / 9)
        g = 128 + 90 * torch.cos((ys + 2 * i) / 7)
        b = 128 + 60 * torch.sin((xs + ys + i) / 13)
        frames.append(torch.stack([r, g, b]).round().to(torch.uint8))
    return frames


def decoded(path: Path) -> tuple[list[np.ndarray], list[float]]:
    with av.open(str(path)) as container:
        frames = list(container.decode(video=0))
    return [f.to_ndarray(format="rgb24", src_colorspace="ITU709") for f in frames], [
        float(f.pts * f.time_base) for f in frames
    ]


def leftover_shared_files() -> list[str]:
    folder = Path("/dev/shm")
    return sorted(p.name for p in folder.glob(f"streamflow-encode-{os.getpid()}-*")) if folder.is_dir() else []


@pytest.mark.parametrize("fmt", [PixelFormat.RGB, PixelFormat.NV12])
def test_process_and_thread_write_the_same_video(tmp_path: Path, fmt: PixelFormat) -> None:
    frames = moving_frames(12)
    images = frames if fmt is PixelFormat.RGB else [rgb_to_nv12(f) for f in frames]
    outputs = {}
    for mode in CpuEncoderMode:
        path = tmp_path / f"{mode.value}.mp4"
        with VideoWriter(path, fps=30, backend="cpu", crf=12, cpu_encoder=mode, slots=3) as writer:
            # pts in a 1/90 time base, 3 ticks a frame: the written times must be i / 30 s.
            writer.write_batch([(image, fmt, 3 * i, Fraction(1, 90)) for i, image in enumerate(images)])
            assert writer.frames == 12
        outputs[mode] = decoded(path)
    (thread_images, thread_times), (process_images, process_times) = (
        outputs[CpuEncoderMode.THREAD],
        outputs[CpuEncoderMode.PROCESS],
    )
    assert process_times == pytest.approx([i / 30 for i in range(12)], abs=1e-6)
    assert process_times == thread_times
    # Same encoder and settings: equally faithful pictures (not byte-identical: x264 threads and SIMD differ).
    assert_close_to_source([process_images, thread_images], frames)
    assert leftover_shared_files() == []


def test_one_slot_and_mixed_formats(tmp_path: Path) -> None:
    """Back-pressure with a single slot; NV12 frames into an encoder opened with RGB are converted."""
    frames = moving_frames(9)
    path = tmp_path / "mixed.mkv"
    with VideoWriter(path, fps=30, backend="cpu", cpu_encoder="process", slots=1) as writer:
        for i, frame in enumerate(frames):
            if i % 2:
                writer.write(rgb_to_nv12(frame), PixelFormat.NV12, pts=i, time_base=Fraction(1, 30))
            else:
                writer.write(frame, PixelFormat.RGB, pts=i, time_base=Fraction(1, 30))
    images, times = decoded(path)
    assert len(images) == 9 and times == pytest.approx([i / 30 for i in range(9)], abs=1e-3)  # MKV: ms
    assert min(psnr(a, f.permute(1, 2, 0).numpy()) for a, f in zip(images, frames, strict=True)) > 28


def test_an_error_in_the_child_is_one_line_naming_the_file(tmp_path: Path) -> None:
    path = tmp_path / "bad.mp4"
    writer = VideoWriter(path, fps=30, backend="cpu", preset="no-such-preset", cpu_encoder="process")
    with pytest.raises(EncodeError) as caught:
        writer.write(moving_frames(1)[0], PixelFormat.RGB)
        writer.close()  # x264 may refuse the preset at the first frame or when flushing
    message = str(caught.value)
    assert "\n" not in message and str(path) in message
    writer.close()  # idempotent after the failure; must not hang
    assert leftover_shared_files() == []


@pytest.mark.parametrize("encoders", [1, 3])
def test_the_children_ignore_sigint_and_finish_the_file(tmp_path: Path, encoders: int) -> None:
    path = tmp_path / "sigint.mp4"
    frames = moving_frames(10)
    with VideoWriter(
        path, fps=30, backend="cpu", cpu_encoder="process", encoders=encoders, segment_seconds=0.1
    ) as writer:
        writer.write_batch([(f, PixelFormat.RGB, i, None) for i, f in enumerate(frames[:5])])
        assert isinstance(writer.encoder, ProcessEncoder)
        process = writer.encoder.process
        children = process._children if isinstance(process, ProcessSegmentedEncoder) else [process]
        for child in children:
            assert child is not None
            os.kill(child._child.pid, signal.SIGINT)  # what Ctrl-C sends the whole process group
        writer.write_batch([(f, PixelFormat.RGB, 5 + i, None) for i, f in enumerate(frames[5:])])
    images, _ = decoded(path)
    assert len(images) == 10
    assert leftover_shared_files() == []


def test_a_killed_child_is_reported_on_the_next_write(tmp_path: Path) -> None:
    path = tmp_path / "killed.mp4"
    writer = VideoWriter(path, fps=30, backend="cpu", cpu_encoder="process")
    writer.write(moving_frames(1)[0], PixelFormat.RGB)
    assert isinstance(writer.encoder, ProcessEncoder) and isinstance(writer.encoder.process, EncoderProcess)
    child = writer.encoder.process._child
    child.kill()
    child.wait()
    with pytest.raises(EncodeError, match=r"killed.mp4.*exited with code -9"):
        for frame in moving_frames(40):  # enough to need a slot the dead child never frees
            writer.write(frame, PixelFormat.RGB)
    with pytest.raises(EncodeError):
        writer.close()


def test_frames_handed_over_survive_the_parent_dying(tmp_path: Path) -> None:
    """The parent exits without close(): the child sees its stdin close and finalizes the file."""
    path = tmp_path / "orphan.mp4"
    script = textwrap.dedent(
        f"""
        import os, torch
        from streamflow.video.encode import VideoWriter
        writer = VideoWriter({str(path)!r}, fps=30, backend="cpu", cpu_encoder="process", slots=4)
        for i in range(20):  # the last frames are still in flight when the parent exits
            writer.write(torch.full((3, 360, 640), 12 * i, dtype=torch.uint8), "rgb", pts=i)
        os._exit(3)  # no close(), no atexit, no finalizers
        """
    )
    result = subprocess.run([sys.executable, "-c", script], cwd=REPO, timeout=120)
    assert result.returncode == 3
    for _ in range(100):  # the orphaned child finishes on its own
        if path.exists() and path.stat().st_size > 0:
            try:
                images, _ = decoded(path)
            except av.error.FFmpegError:
                images = []
            if len(images) == 20:
                break
        subprocess.run(["sleep", "0.1"], check=True)
    assert len(images) == 20


def test_encoder_process_directly(tmp_path: Path) -> None:
    settings = EncoderSettings(str(tmp_path / "d.mp4"), "mp4", 64, 48, Fraction(25), Fraction(1, 25), crf=20)
    process = EncoderProcess(settings, fmt="nv12", slots=2)
    for pts in range(6):
        slot = process.acquire()
        assert slot is not None
        process.slot(slot)[:] = 16 + 30 * pts
        process.submit([(slot, pts)])
    assert process.close() == 6
    assert process.close() == 6  # idempotent
    images, times = decoded(tmp_path / "d.mp4")
    assert len(images) == 6 and times == pytest.approx([i / 25 for i in range(6)])


@pytest.mark.gpu
@pytest.mark.parametrize(
    "options",
    [
        {"cpu_encoder": "process", "slots": 4},
        {"cpu_encoder": "thread"},
        {"encoders": 2, "segment_seconds": 0.2},
        {"cpu_encoder": "process", "encoders": 3, "segment_seconds": 0.1, "slots": 2},
    ],
    ids=["process", "thread", "segments", "process-segments"],
)
def test_gpu_frames_are_copied_after_their_producer_finished(tmp_path: Path, options: dict[str, object]) -> None:
    """Frames written on a side stream right after a long kernel: the copy must wait for it, not race it."""
    stream = torch.cuda.Stream()
    path = tmp_path / "gpu.mp4"
    expected = []
    with torch.cuda.stream(stream), VideoWriter(path, fps=30, backend="cpu", **options) as writer:  # type: ignore[arg-type]
        for i in range(16):
            big = torch.randn(2048, 2048, device="cuda")
            for _ in range(20):  # keep the stream busy for a while before the frame is written
                big = torch.tanh(big @ big.T / 2048)  # bounded: the value below stays finite
            value = (big[0, 0] * 0 + 20 + 12 * i).clamp(0, 255)
            frame = torch.zeros(3, 64, 96, device="cuda", dtype=torch.uint8) + value.to(torch.uint8)
            expected.append(float(20 + 12 * i))
            writer.write(frame, PixelFormat.RGB, pts=i)
    images, _ = decoded(path)
    assert len(images) == 16
    means = [float(img.mean()) for img in images]
    assert means == pytest.approx(expected, abs=3)


def test_nv12_goes_straight_into_x264_with_the_same_pictures(tmp_path: Path) -> None:
    """NV12 frames are fed to libx264 as NV12 (no conversion pass): the same pictures as through yuv420p."""
    sources = moving_frames(8)
    frames = [rgb_to_nv12(f).numpy() for f in sources]
    outputs = []
    for pix_fmt in ("nv12", "yuv420p"):
        path = tmp_path / f"{pix_fmt}.mp4"
        encoder = PyAVEncoder(
            EncoderSettings(str(path), "mp4", 96, 64, Fraction(30), Fraction(1, 30), crf=14, pix_fmt=pix_fmt)
        )
        for i, frame in enumerate(frames):
            encoder.encode(frame, "nv12", i)
        encoder.close()
        outputs.append(decoded(path)[0])
    assert len(outputs[0]) == len(outputs[1]) == 8
    assert_close_to_source(outputs, sources)
    writer = VideoWriter(tmp_path / "w.mp4", fps=30, backend="cpu")
    writer.write(torch.from_numpy(frames[0]), PixelFormat.NV12)
    assert isinstance(writer.encoder, ThreadEncoder) and isinstance(writer.encoder.encoder, PyAVEncoder)
    assert writer.encoder.encoder.settings.pix_fmt == "nv12"
    writer.close()


def test_the_child_keeps_encoding_when_nobody_reads_its_replies(tmp_path: Path) -> None:
    """The parent is gone (its end of the reply pipe closed): every frame handed over is still written."""
    settings = EncoderSettings(str(tmp_path / "gone.mp4"), "mp4", 64, 48, Fraction(30), Fraction(1, 30))
    process = EncoderProcess(settings, fmt="nv12", slots=8)
    child = process._child
    assert child.stdout is not None
    child.stdout.close()  # the child's "free" replies now fail with a broken pipe
    for pts in range(6):  # written straight to the pipe: the parent side cannot read replies now
        process.slot(pts)[:] = 16 + 30 * pts
        process._send([{"slot": pts, "pts": pts}])
    process._stdin.close()  # what the parent's death looks like from the child: end of input
    assert child.wait(timeout=60) == 0
    images, times = decoded(tmp_path / "gone.mp4")
    assert len(images) == 6 and times == pytest.approx([i / 30 for i in range(6)])
