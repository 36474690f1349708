"""Super-resolution end to end: decode -> window -> infer (the shipped model) -> sr_output -> encode.

Every output frame must exist (same count and timestamps as the input) at twice the resolution.
"""

from __future__ import annotations

from pathlib import Path

import av
import pytest

from stages.decode import Decode
from stages.encode import Encode
from stages.infer import Infer
from stages.sr_postprocess import SuperResolutionOutput
from stages.window import Window
from streamflow.config import build_pipeline
from streamflow.pipeline import Pipeline
from streamflow.video.synth import write_clip

ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT / "models" / "vsr_x2.onnx"
CONFIG = ROOT / "configs" / "super_resolution.yaml"


def _read(path: Path) -> tuple[list[float], tuple[int, int]]:
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        frames = list(container.decode(stream))
        times = [float(f.pts * f.time_base) for f in frames if f.pts is not None and f.time_base is not None]
        assert len(times) == len(frames)
        return times, (frames[0].width, frames[0].height)


def _shapes(batch: int, height: int, width: int) -> dict[str, dict[str, list[int]]]:
    return {
        "frames": {"min": [1, 15, height, width], "opt": [batch, 15, height, width], "max": [batch, 15, height, width]}
    }


@pytest.mark.parametrize(("frames", "out_format"), [(3, "rgb"), (7, "nv12")])
def test_pipeline_on_cpu_keeps_every_frame_at_twice_the_size(tmp_path: Path, frames: int, out_format: str) -> None:
    clip = write_clip(tmp_path / "in.mp4", width=48, height=32, frames=frames, pattern="testsrc")
    out = tmp_path / "out.mp4"
    Pipeline(
        [
            Decode(uri=str(clip), format="nv12"),
            Window(size=5, emit_batch=2),
            Infer(model=MODEL, input_shapes=_shapes(2, 32, 48), backend="onnxruntime"),
            SuperResolutionOutput(result="hr", format=out_format),
            Encode(path=str(out), backend="cpu", crf=18),
        ],
        device="cpu",
    ).run_sync()
    times_in, _ = _read(clip)
    times_out, size = _read(out)
    assert size == (96, 64)
    assert times_out == pytest.approx(times_in)


def test_config_runs_with_another_input_size(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    clip = write_clip(tmp_path / "in.mp4", width=64, height=36, frames=4, pattern="testsrc")
    monkeypatch.setenv("SR_CLIP", str(clip))
    monkeypatch.setenv("SR_OUT", str(tmp_path))
    shapes = "{frames: {min: [1, 15, 36, 64], opt: [4, 15, 36, 64], max: [4, 15, 36, 64]}}"
    build_pipeline(CONFIG, overrides=[f"upscale.input_shapes={shapes}"]).run_sync()  # device: auto
    times_out, size = _read(tmp_path / "super_resolution_source.mp4")
    assert size == (128, 72)
    assert len(times_out) == 4


@pytest.mark.gpu
def test_config_on_gpu_with_a_360p_clip(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    clip = write_clip(tmp_path / "in.mp4", width=640, height=360, frames=30, pattern="testsrc")
    monkeypatch.setenv("SR_CLIP", str(clip))
    monkeypatch.setenv("SR_OUT", str(tmp_path))
    build_pipeline(CONFIG).run_sync()
    times_in, _ = _read(clip)
    times_out, size = _read(tmp_path / "super_resolution_source.mp4")
    assert size == (1280, 720)
    assert times_out == pytest.approx(times_in)
