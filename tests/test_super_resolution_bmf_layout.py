"""Super-resolution with BMF's SR engine layout: configs/super_resolution_bmf_layout.yaml end to end.

7 frames in, 3 out, NHWC (models/vsr_x2_7in3out_nhwc.onnx): clips whose lengths are and are not
multiples of 3, shorter and longer than the window, keep every frame once, in order, with its pts,
at twice the size. Which input frame each output shows is checked by content too (the testsrc
pattern moves every frame), so a duplicated or dropped frame with the right pts would still fail.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import av
import numpy as np
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F

from streamflow.config import build_pipeline, load_config
from streamflow.models.vsr import StackedWindows, from_onnx_weights
from streamflow.video.synth import write_clip

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "super_resolution_bmf_layout.yaml"
MODEL = ROOT / "models" / "vsr_x2_7in3out_nhwc.onnx"
WIDTH, HEIGHT = 48, 32


def _decode(path: Path) -> tuple[list[int], list[np.ndarray]]:
    with av.open(str(path)) as container:
        frames = list(container.decode(video=0))
    return [f.pts for f in frames], [f.to_ndarray(format="rgb24").astype(np.float32) for f in frames]


def _run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, frames: int, device: str, *overrides: str
) -> tuple[Path, Path]:
    clip = write_clip(tmp_path / "in.mp4", width=WIDTH, height=HEIGHT, frames=frames, pattern="testsrc")
    monkeypatch.setenv("SR_CLIP", str(clip))
    monkeypatch.setenv("SR_OUT", str(tmp_path))
    shape = f'upscale.input_shapes={{"input:0": [1, {HEIGHT}, {WIDTH}, 21]}}'
    config = load_config(CONFIG, [shape, *overrides]).model_copy(update={"device": device})
    build_pipeline(config).run_sync()
    return clip, tmp_path / "super_resolution_bmf_layout.mp4"


def _check_every_frame_once(clip: Path, out: Path) -> None:
    pts_in, images_in = _decode(clip)
    pts_out, images_out = _decode(out)
    assert pts_out == pts_in
    assert images_out[0].shape == (2 * HEIGHT, 2 * WIDTH, 3)
    # Each output, shrunk back, is nearest to the input frame with its index.
    small = [
        F.avg_pool2d(torch.from_numpy(image).permute(2, 0, 1)[None], 2)[0].permute(1, 2, 0).numpy()
        for image in images_out
    ]
    for i, picture in enumerate(small):
        errors = [float(np.mean((picture - source) ** 2)) for source in images_in]
        assert int(np.argmin(errors)) == i, f"output {i} looks like input {int(np.argmin(errors))}: {errors}"


@pytest.mark.parametrize("frames", [1, 2, 3, 7, 8, 10])
def test_every_frame_once_in_order_with_its_pts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, frames: int) -> None:
    clip, out = _run(tmp_path, monkeypatch, frames, "cpu")
    _check_every_frame_once(clip, out)


def test_stacked_model_is_the_five_frame_model() -> None:
    """Output frame k of the 7-in/3-out file equals the 5-frame model on input frames k .. k + 4."""
    digest = hashlib.sha256(MODEL.read_bytes()).hexdigest()
    assert digest == "6dc1c238abdc93853ea18316c9e3fd0218a2bbdacd281a60859ad5347757737c"  # as models/VSR.md says
    net = from_onnx_weights(ROOT / "models" / "vsr_x2.onnx")
    x = torch.rand(1, 20, 24, 21, generator=torch.Generator().manual_seed(1))
    session = ort.InferenceSession(str(MODEL), providers=["CPUExecutionProvider"])
    got = torch.from_numpy(session.run(["output:0"], {"input:0": x.numpy()})[0])
    assert got.shape == (1, 40, 48, 9)
    with torch.no_grad():
        for k in range(3):
            window = x[..., 3 * k : 3 * k + 15].permute(0, 3, 1, 2)
            torch.testing.assert_close(got[..., 3 * k : 3 * k + 3].permute(0, 3, 1, 2), net(window), atol=1e-4, rtol=0)
    with pytest.raises(ValueError, match="window of 3"):
        StackedWindows(net, frames_in=7, frames_out=5)


@pytest.mark.gpu
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_config_on_gpu(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, precision: str) -> None:
    clip, out = _run(tmp_path, monkeypatch, 10, "cuda", f"upscale.precision={precision}")
    _check_every_frame_once(clip, out)
