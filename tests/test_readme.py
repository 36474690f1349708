"""Every YAML and Python snippet the README shows runs as shown (from the repository root, on the CPU)."""

from __future__ import annotations

import json
import re
import runpy
from pathlib import Path

import pytest

from streamflow.config import build_pipeline, load_config

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def snippets(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", README, re.S)


def test_the_readme_shows_the_snippets_tested_here() -> None:
    assert len(snippets("yaml")) == 2 and len(snippets("python")) == 1, "update this test with the README"


def test_pipeline_in_yaml_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The "A pipeline in YAML" snippet, saved as a file in the repository root and run, writes detections."""
    monkeypatch.chdir(ROOT)
    monkeypatch.setenv("FACES_JSONL", str(tmp_path / "faces.jsonl"))
    config = tmp_path / "my_faces.yaml"
    config.write_text(snippets("yaml")[0])
    load_config(config)  # what `streamflow validate` checks
    stats = build_pipeline(config, max_frames=8).run_sync()  # device: auto (the CPU here)
    lines = (tmp_path / "faces.jsonl").read_text().splitlines()
    assert len(lines) == 8 == stats.stage("detections").frames_in
    # Three people in every frame of the sample (samples/faces_boxes.json); CenterFace finds them all.
    assert [len(json.loads(line)["results"]["boxes"]) for line in lines] == [3] * 8


def test_custom_stage_in_python_and_from_yaml(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`python brighten.py` prints the frame count; the YAML beside it finds `brighten:Brighten` by itself."""
    script = tmp_path / "brighten.py"
    script.write_text(snippets("python")[0])
    monkeypatch.chdir(ROOT)
    runpy.run_path(str(script), run_name="__main__")
    frames, _, fps, _ = capsys.readouterr().out.split()
    assert int(frames) == 120  # every frame of samples/faces.mp4
    assert float(fps) >= 0
    config = tmp_path / "brighter.yaml"
    config.write_text(snippets("yaml")[1])
    pipeline = build_pipeline(config, max_frames=5)  # brighten.py sits beside the config, not on the path
    assert type(pipeline.stages[1]).__name__ == "Brighten"
    stats = pipeline.run_sync()
    assert stats.stage("sink").frames_in == 5
