"""`sources:` in YAML: specs built from the first stage as a template, errors as one config line."""

from __future__ import annotations

from pathlib import Path

import pytest

from streamflow.config import ConfigError, build_pipeline
from streamflow.sources import SourceSpec, parse_source_arg, read_sources_file, source_type_for
from streamflow.video.synth import write_clip


def write_config(tmp_path: Path, sources: str, extra: str = "") -> Path:
    path = tmp_path / "p.yaml"
    path.write_text(f"""
name: many
device: cpu
feeder_threads: 2
{extra}sources:
{sources}
stages:
  - name: source
    type: decode
    emit_batch: 2
    format: nv12
  - name: sink
    type: "null"
    batch_size: 4
    batch_timeout_ms: 5
""")
    return path


def test_yaml_sources_run_through_a_feeder_pool(tmp_path: Path) -> None:
    a = write_clip(tmp_path / "a.mp4", width=64, height=48, frames=5)
    b = write_clip(tmp_path / "b.mp4", width=32, height=32, frames=3, fps=15)
    config = write_config(tmp_path, f"  - {{id: a, uri: {a}}}\n  - {{id: b, uri: {b}, emit_batch: 1}}\n")
    pipeline = build_pipeline(config)
    assert pipeline.feeder_threads == 2 and pipeline.stages[1].batch_timeout_ms == 5
    stats = pipeline.run_sync()
    assert {s.id: s.frames_done for s in stats.sources} == {"a": 5, "b": 3}
    # The template's options reach every source; an entry's own options win.
    assert stats.stage("source").frames_out == 8


@pytest.mark.parametrize(
    ("sources", "extra", "message"),
    [
        ("  - {id: 'a b', uri: x.mp4}\n", "", "field 'sources.0.id'"),
        ("  - {id: a}\n", "", "field 'sources.0.uri'"),
        ("  - {id: a, uri: CLIP, emit_batch: 0}\n", "", "source 'a': field 'emit_batch'"),
        ("  - {id: a, uri: CLIP, lop: true}\n", "", "source 'a': field 'lop': unknown option; did you mean 'loop'"),
        ("  - {id: a, uri: CLIP}\n  - {id: a, uri: CLIP}\n", "", "source id 'a' is already in use"),
        ("  - {id: a, uri: CLIP}\n  - {id: b, uri: CLIP}\n", "max_sources: 1\n", "max_sources (1) reached"),
    ],
)
def test_bad_source_entries_are_config_errors(tmp_path: Path, sources: str, extra: str, message: str) -> None:
    clip = write_clip(tmp_path / "c.mp4", width=32, height=32, frames=1)
    config = write_config(tmp_path, sources.replace("CLIP", str(clip)), extra)
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        build_pipeline(config)


def test_source_arguments_and_files(tmp_path: Path) -> None:
    assert parse_source_arg("cam=rtsp://h/live?a=b") == SourceSpec(id="cam", uri="rtsp://h/live?a=b")
    assert parse_source_arg("rtsp://h/live?a=b", default_id="s1").id == "s1", "a bare uri may hold '='"
    assert source_type_for("RTSPS://h/x") == "rtsp" and source_type_for("a.mp4") == "decode"
    listing = tmp_path / "list.txt"
    listing.write_text("# comment\n\na.mp4\nlobby = rtsp://u:pw@cam/1\n")
    specs = read_sources_file(listing)
    assert [(s.id, s.uri) for s in specs] == [("s3", "a.mp4"), ("lobby", "rtsp://u:pw@cam/1")]
    assert "pw" not in repr(specs[1]), "the password never shows"
    listing.write_text("bad id=a.mp4\n")
    with pytest.raises(ValueError, match="line 1: field 'id'"):
        read_sources_file(listing)


def test_a_camera_among_files_gets_the_live_source_with_the_template_options(tmp_path: Path) -> None:
    clip = write_clip(tmp_path / "c.mp4", width=32, height=32, frames=1)
    config = write_config(
        tmp_path,
        f"  - {{id: cam, uri: 'rtsp://u:secret@127.0.0.1:9/live', transport: udp}}\n  - {{id: f, uri: {clip}}}\n",
    )
    pipeline = build_pipeline(config)
    camera, file = pipeline.source_stage("cam"), pipeline.source_stage("f")
    assert camera is not None and file is not None
    assert type(camera).__name__ == "RtspSource" and camera.live and not file.live
    assert camera.config.format == "nv12" and camera.config.transport == "udp" and camera.config.source_id == "cam"
    assert file.config.emit_batch == 2 and file.config.source_id == "f"
    assert "secret" not in repr(camera)
