"""NVENC probe and encode fallback on the GPU host (GPU only)."""

from __future__ import annotations

import logging
from fractions import Fraction
from pathlib import Path

import av
import pytest
import torch

from streamflow.video.encode import EncodeBackend, EncodeError, VideoWriter, nvenc_probe
from streamflow.video.synth import pattern_frame

pytestmark = pytest.mark.gpu

NO_NVENC = ("H100", "H200", "A100")


def test_probe_opens_a_session_and_caches_the_answer() -> None:
    first = nvenc_probe(0)
    assert nvenc_probe(0) is first
    name = torch.cuda.get_device_name(0)
    print(f"{name}: {first}")
    if any(chip in name for chip in NO_NVENC):
        assert not first.available
        assert "session" in first.reason


def test_cpu_fallback_from_cuda_frames_is_playable(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    frames = [torch.from_numpy(pattern_frame(i, 320, 240)).permute(2, 0, 1).contiguous().cuda() for i in range(12)]
    path = tmp_path / "fallback.mp4"
    with caplog.at_level(logging.WARNING), VideoWriter(path, fps=30, backend="auto") as writer:
        stream = torch.cuda.Stream()
        with torch.cuda.stream(stream):
            for i, frame in enumerate(frames):
                writer.write(frame, "rgb", pts=i, time_base=Fraction(1, 30))
    expected = EncodeBackend.NVENC if nvenc_probe(0).available else EncodeBackend.CPU
    assert writer.backend is expected
    if expected is EncodeBackend.CPU:
        assert any("NVENC unavailable" in r.getMessage() for r in caplog.records)
    with av.open(str(path)) as container:
        decoded = list(container.decode(video=0))
    assert len(decoded) == 12
    last = decoded[-1]
    assert last.pts is not None and last.time_base is not None
    assert float(last.pts * last.time_base) == pytest.approx(11 / 30)


def test_explicit_nvenc_fails_clearly_where_absent(tmp_path: Path) -> None:
    if nvenc_probe(0).available:
        pytest.skip("this GPU has NVENC")
    writer = VideoWriter(tmp_path / "x.mp4", fps=30, backend="nvenc")
    with pytest.raises(EncodeError, match=r"x\.mp4.*NVENC"):
        writer.write(torch.zeros(3, 64, 64, dtype=torch.uint8, device="cuda"), "rgb", pts=0)
    writer.close()
