"""Outputs survive a killed process (issue 17 item 2), and truncated headers are one-line errors
(item 5): a `streamflow run` killed with SIGKILL leaves an MP4 that plays up to its last fragment."""

from __future__ import annotations

import signal
from pathlib import Path

import av
import pytest
from test_faults_cli import WAIT_S, start, wait_for

from streamflow.video.probe import VideoInputError, probe
from streamflow.video.synth import write_clip


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_clip(tmp_path_factory.mktemp("durable") / "in.mp4", width=64, height=48, frames=120, gop=30)


@pytest.mark.parametrize("encoder", ["cpu_encoder: thread", "cpu_encoder: process", "encoders: 2, segment_seconds: 1"])
def test_a_killed_run_leaves_a_playable_mp4(tmp_path: Path, clip: Path, encoder: str) -> None:
    out = tmp_path / "out.mp4"
    path = tmp_path / "p.yaml"
    path.write_text(f"""
name: killed
device: cpu
stages:
  - {{name: src, type: decode, uri: '{clip}'}}
  - {{name: video, type: encode, path: '{out}', backend: cpu, {encoder}}}
  - {{name: stuck, type: "support.fault_stages:BlockOn", index: 100, marker: '{tmp_path / "blocked"}'}}
""")
    process = start(path)
    wait_for(tmp_path / "blocked", process)  # the encoder has taken 101 frames (3 s of video)
    process.send_signal(signal.SIGKILL)
    process.communicate(timeout=WAIT_S)
    with av.open(str(out)) as container:
        times = [float(frame.time) for frame in container.decode(video=0)]
    # Fragments are cut at least once a second: all but the last second or two are there.
    assert len(times) >= 30
    assert times == sorted(times) and times[0] == 0.0


def test_every_truncation_of_a_fast_start_header_is_a_clear_error(tmp_path: Path) -> None:
    data = write_clip(tmp_path / "f.mp4", width=64, height=48, frames=4, faststart=True).read_bytes()
    moov_end = data.index(b"mdat") - 4  # fast start: the whole index sits before the media data
    cut = tmp_path / "cut.mp4"
    for length in range(1, moov_end + 1, 3):
        cut.write_bytes(data[:length])
        try:
            probe(cut)
        except VideoInputError as error:
            assert str(cut) in str(error) and "\n" not in str(error)
