"""Frame accounting (issue 17 item 6): a run that delivers fewer frames than the container states
ends with one warning line (source, expected, delivered, why); strict mode makes it an error."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from test_cli import cli

from stages.decode import Decode
from streamflow import Pipeline
from streamflow.pipeline import FrameLossError
from streamflow.testing import ListSink
from streamflow.video.probe import VideoInputError
from streamflow.video.synth import write_clip
from support.damage import packet_spans, truncated, zeroed


@pytest.fixture(scope="module")
def cut_clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fast-start MP4 (index first: it states 30 frames) cut before its 12th packet."""
    folder = tmp_path_factory.mktemp("accounting")
    clip = write_clip(folder / "full.mp4", width=64, height=48, frames=30, gop=10, faststart=True)
    cut = folder / "cut.mp4"
    cut.write_bytes(truncated(clip.read_bytes(), packet_spans(clip)[12].pos))
    return cut


def run(uri: Path, **options: object) -> tuple[list[str], int]:
    sink = ListSink()
    stats = Pipeline([Decode(uri=str(uri), name="cam"), sink], device="cpu", **options).run_sync()  # type: ignore[arg-type]
    return stats.warnings, len(sink.frames)


def test_a_cut_file_warns_with_expected_delivered_and_why(cut_clip: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        warnings, delivered = run(cut_clip)
    assert delivered == 12
    assert warnings == [
        f"source {str(cut_clip)!r} (stage 'cam'): the container states 30 frames, 12 delivered, 18 lost "
        "(demuxing ended after 12 packets: file truncated or damaged)"
    ]
    assert sum(warnings[0] in record.getMessage() for record in caplog.records) == 1


def test_an_mkv_with_zeroed_packets_names_the_loss(tmp_path: Path) -> None:
    clip = write_clip(tmp_path / "c.mkv", width=64, height=48, frames=30, gop=10)
    spans = packet_spans(clip)
    damaged = tmp_path / "zeroed.mkv"
    damaged.write_bytes(zeroed(clip.read_bytes(), spans[14].pos, spans[16].pos + spans[16].size - spans[14].pos))
    warnings, delivered = run(damaged)
    assert delivered < 29 and len(warnings) == 1
    assert f"implies (from its duration) 30 frames, {delivered} delivered, {30 - delivered} lost" in warnings[0]


def test_an_intact_file_and_a_partial_read_do_not_warn(tmp_path: Path) -> None:
    clip = write_clip(tmp_path / "ok.mp4", width=64, height=48, frames=10)
    assert run(clip) == ([], 10)
    assert run(clip, max_frames=4) == ([], 4)


def test_strict_mode_makes_lost_frames_an_error(cut_clip: Path, tmp_path: Path) -> None:
    with pytest.raises(FrameLossError, match=r"30 frames, 12 delivered, 18 lost .*\(strict frame accounting\)"):
        run(cut_clip, strict_frames=True)
    path = tmp_path / "p.yaml"
    path.write_text(f"name: t\ndevice: cpu\nstages:\n  - {{name: cam, type: decode, uri: '{cut_clip}'}}\n")
    assert cli("run", str(path), "-q").returncode == 0
    result = cli("run", str(path), "-q", "--strict-frames")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "FrameLossError: source" in result.stderr.strip().splitlines()[-1]
    path.write_text(path.read_text().replace("device: cpu", "device: cpu\nstrict_frames: true"))
    assert cli("run", str(path), "-q").returncode == 1


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["auto", "nvdec"])
def test_nvdec_paths_account_for_lost_frames_too(cut_clip: Path, tmp_path: Path, backend: str) -> None:
    """NVDEC (batch decoder for the indexed MP4, packet decoder for MKV): the same warning, or one clear line."""
    clip = write_clip(tmp_path / "c.mkv", width=64, height=48, frames=30, gop=10)
    spans = packet_spans(clip)
    zeroed_mkv = tmp_path / "zeroed.mkv"
    zeroed_mkv.write_bytes(zeroed(clip.read_bytes(), spans[14].pos, spans[16].pos + spans[16].size - spans[14].pos))
    for uri in (cut_clip, zeroed_mkv):
        sink = ListSink()
        try:
            stats = Pipeline([Decode(uri=str(uri), name="cam", backend=backend), sink], device="cuda").run_sync()
        except VideoInputError as error:
            assert "\n" not in str(error) and str(uri) in str(error)
            continue
        delivered = len(sink.frames)
        if delivered < 29:
            assert len(stats.warnings) == 1 and f"{delivered} delivered, {30 - delivered} lost" in stats.warnings[0]
