"""Preflight (issue 17 items 1 and 8, issue 12 item 2): outputs never overwrite inputs, output
folders are created or refused with one line, bad inputs and devices are found by `validate` and
before `run` sets anything up."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from test_cli import cli

from stages.decode import Decode
from stages.jsonl import JsonlSink
from streamflow.preflight import PreflightError, check_pipeline_files
from streamflow.testing import ListSource
from streamflow.video.synth import write_clip


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_clip(tmp_path_factory.mktemp("preflight") / "in.mp4", width=64, height=48, frames=6)


def pipeline_yaml(tmp_path: Path, uri: str, outputs: str, *, device: str = "cpu") -> Path:
    path = tmp_path / "p.yaml"
    path.write_text(f"name: t\ndevice: {device}\nstages:\n  - {{name: src, type: decode, uri: '{uri}'}}\n{outputs}")
    return path


def one_error_line(stderr: str) -> str:
    assert "Traceback" not in stderr
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    return lines[0]


@pytest.mark.parametrize("spelling", ["same", "dot", "symlink"])
def test_an_output_onto_the_input_is_refused_and_the_input_kept(tmp_path: Path, clip: Path, spelling: str) -> None:
    source = tmp_path / "in.mp4"
    source.write_bytes(clip.read_bytes())
    target = {"same": str(source), "dot": f"{tmp_path}/./in.mp4", "symlink": str(tmp_path / "link.mp4")}[spelling]
    if spelling == "symlink":
        (tmp_path / "link.mp4").symlink_to(source)
    path = pipeline_yaml(tmp_path, str(source), f"  - {{name: video, type: encode, path: '{target}'}}\n")
    before = source.read_bytes()
    result = cli("run", str(path))
    assert result.returncode == 2
    line = one_error_line(result.stderr)
    assert "stage 'video'" in line and repr(target) in line and repr(str(source)) in line and "stage 'src'" in line
    assert source.read_bytes() == before


def test_jsonl_onto_the_config_file_is_refused(tmp_path: Path, clip: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(pipeline_yaml(tmp_path, str(clip), f"  - {{name: d, type: jsonl, path: '{path}'}}\n").read_text())
    before = path.read_text()
    result = cli("validate", str(path))
    assert result.returncode == 2
    assert "is the input" in one_error_line(result.stderr) and "config" in result.stderr
    assert path.read_text() == before


def test_two_outputs_on_one_file_and_a_model_as_output_are_refused(tmp_path: Path, clip: Path) -> None:
    out = str(tmp_path / "d.jsonl")
    with pytest.raises(PreflightError, match="is also the output"):
        check_pipeline_files([Decode(uri=str(clip), name="src"), JsonlSink(path=out, name="a"), JsonlSink(path=out)])
    model = tmp_path / "m.onnx"
    model.write_bytes(b"model bytes")
    with pytest.raises(PreflightError, match=r"output '.*m\.onnx' is the input '.*m\.onnx' of config"):
        check_pipeline_files([ListSource([]), JsonlSink(path=str(model))], extra_inputs=[str(model)])
    assert model.read_bytes() == b"model bytes"


def test_run_creates_missing_output_folders(tmp_path: Path, clip: Path) -> None:
    video, lines = tmp_path / "a" / "b" / "o.mp4", tmp_path / "c" / "d.jsonl"
    outputs = f"  - {{name: video, type: encode, path: '{video}', backend: cpu}}\n"
    outputs += f"  - {{name: lines, type: jsonl, path: '{lines}'}}\n"
    result = cli("run", str(pipeline_yaml(tmp_path, str(clip), outputs)), "-q")
    assert result.returncode == 0, result.stderr
    assert video.stat().st_size > 0 and len(lines.read_text().splitlines()) == 6


def test_per_source_outputs_are_checked_per_source_against_every_source_input(tmp_path: Path, clip: Path) -> None:
    own = tmp_path / "a.mp4"  # source 'a' reads the file its {source} output would name
    own.write_bytes(clip.read_bytes())
    outputs = f"  - {{name: video, type: encode, path: '{tmp_path}/{{source}}.mp4', backend: cpu}}\n"
    path = pipeline_yaml(tmp_path, str(clip), outputs)
    result = cli("run", str(path), "-q", "--source", f"b={clip}", "--source", f"a={own}")
    assert result.returncode == 2
    line = one_error_line(result.stderr)
    assert "stage 'video'" in line and repr(str(own)) in line and "is the input" in line
    assert own.read_bytes() == clip.read_bytes()


def test_per_source_output_folders_are_made_per_source_never_for_the_placeholder(tmp_path: Path, clip: Path) -> None:
    outputs = f"  - {{name: lines, type: jsonl, path: '{tmp_path}/out/{{source}}/d.jsonl'}}\n"
    path = pipeline_yaml(tmp_path, str(clip), outputs)
    result = cli("run", str(path), "-q", "--source", f"a={clip}", "--source", f"b={clip}")
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a", "b"]
    assert len((tmp_path / "out" / "b" / "d.jsonl").read_text().splitlines()) == 6


def test_validate_checks_folders_without_creating_them(tmp_path: Path, clip: Path) -> None:
    path = pipeline_yaml(tmp_path, str(clip), f"  - {{name: d, type: jsonl, path: '{tmp_path / 'new' / 'd.jsonl'}'}}\n")
    assert cli("validate", str(path)).returncode == 0
    assert not (tmp_path / "new").exists()


def test_a_folder_that_cannot_be_created_fails_before_any_stage_is_set_up(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("a file where a folder should be")
    marker = tmp_path / "set_up.jsonl"
    path = tmp_path / "p.yaml"
    path.write_text(f"""
name: t
device: cpu
stages:
  - {{name: source, type: "support.stages:CountingSource", count: 3}}
  - {{name: early, type: "support.stages:LinesSink", path: '{marker}'}}
  - {{name: late, type: jsonl, path: '{tmp_path / "file" / "sub" / "d.jsonl"}'}}
""")
    for command in ("validate", "run"):
        result = cli(command, str(path))
        assert result.returncode == 2
        line = one_error_line(result.stderr)
        assert "stage 'late'" in line and "is a file" in line
    assert not marker.exists()  # no stage's setup ran (setup is where a model would load)


@pytest.mark.parametrize(
    ("uri", "kind"),
    [("/dev/zero", "character device"), ("/dev/urandom", "character device"), ("/proc/self/mem", "pseudo-file")],
)
def test_device_and_kernel_files_as_input(tmp_path: Path, uri: str, kind: str) -> None:
    result = cli("validate", str(pipeline_yaml(tmp_path, uri, "  - {name: n, type: 'null'}\n")))
    assert result.returncode == 2
    line = one_error_line(result.stderr)
    assert "stage 'src'" in line and repr(uri) in line and kind in line


@pytest.mark.skipif(os.path.exists("/dev/nvidia7"), reason="this machine has an 8th GPU")
@pytest.mark.parametrize(("device", "words"), [("cuda:7", "cuda:7"), ("tpu", "unsupported device 'tpu'")])
def test_unusable_devices_fail_validate_with_one_line(tmp_path: Path, clip: Path, device: str, words: str) -> None:
    result = cli("validate", str(pipeline_yaml(tmp_path, str(clip), "  - {name: n, type: 'null'}\n", device=device)))
    assert result.returncode == 2
    assert words in one_error_line(result.stderr)


def test_stats_json_onto_the_config_is_refused(tmp_path: Path, clip: Path) -> None:
    path = pipeline_yaml(tmp_path, str(clip), "  - {name: n, type: 'null'}\n")
    before = path.read_text()
    result = cli("run", str(path), "--stats-json", str(path))
    assert result.returncode == 2
    assert "--stats-json: output" in one_error_line(result.stderr) and path.read_text() == before
