"""benchmarks/sr_quality.py on a small case: held-out clips, compressed by libx264, through `streamflow run`."""

from __future__ import annotations

import json
from pathlib import Path
from types import ModuleType

import pytest

from support.scripts import load_script


def _sr_quality() -> ModuleType:
    return load_script("benchmarks/sr_quality.py")


def test_small_case_scores_the_pipeline_output_against_bicubic(tmp_path: Path) -> None:
    pytest.importorskip("skimage")
    sr_quality = _sr_quality()
    report = sr_quality.evaluate(out=tmp_path, sequences=["coffee"], frames=3, crfs=[28])
    rows = {row["input"]: row for row in report["rows"]}
    assert set(rows) == {"lossless", "crf28"}
    for row in rows.values():
        assert row["sequence"] == "coffee" and row["frames"] == 3
        assert 20 < row["bicubic_psnr_y"] < 45 and 20 < row["model_psnr_y"] < 50
        assert 0 < row["bicubic_ssim_y"] < 1 and 0 < row["model_ssim_y"] < 1
    # The codec's damage shows in the baseline: the CRF 28 input is further from the truth than the lossless one.
    assert rows["crf28"]["bicubic_psnr_y"] < rows["lossless"]["bicubic_psnr_y"] - 0.5
    # The pipeline's output is the model's, not a copy of bicubic: the shipped model gains on this photograph
    # (about +2 dB lossless in the small case); a broken window, colour conversion or output encode loses it.
    assert rows["lossless"]["gain_db"] > 0.5 and rows["crf28"]["gain_db"] > 0.2
    written = json.loads((tmp_path / "sr_quality.json").read_text())
    assert written["rows"] == report["rows"] and written["output_overrides"]
    text = (tmp_path / "sr_quality.md").read_text()
    assert "H.264 CRF 28" in text and "lossless" in text
    # Every clip went through the one pipeline run and its output is twice the input's size.
    outputs = sorted(p.name for p in (tmp_path / "outputs").iterdir())
    assert outputs == ["super_resolution_coffee-crf28.mp4", "super_resolution_coffee-lossless.mp4"]
