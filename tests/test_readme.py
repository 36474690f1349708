"""The README's custom-stage example runs as written (from the repository root)."""

from __future__ import annotations

import re
import runpy
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_custom_stage_example_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    text = (ROOT / "README.md").read_text()
    match = re.search(r"## A custom stage in Python\n\n```python\n(.*?)```", text, re.S)
    assert match, "README lost its custom-stage example"
    script = tmp_path / "example.py"
    script.write_text(match.group(1))
    monkeypatch.chdir(ROOT)
    runpy.run_path(str(script), run_name="__main__")
    frames, fps = capsys.readouterr().out.split()
    assert int(frames) == 120  # every frame of samples/faces.mp4
    assert float(fps) > 0
