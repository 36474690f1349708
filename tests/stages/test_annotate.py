"""`annotate`: boxes, landmarks, blur and pixelate drawn into RGB and NV12 frames in place."""

from __future__ import annotations

from fractions import Fraction

import pydantic
import pytest
import torch

from stages.annotate import Annotate
from streamflow.frame import Batch, Frame, PixelFormat
from streamflow.ops.color import nv12_to_rgb, rgb_to_nv12
from streamflow.testing import run_stage

BOXES = torch.tensor([[8.0, 8.0, 40.0, 32.0]])
LANDMARKS = torch.tensor([[[16.0, 16.0], [32.0, 16.0], [24.0, 22.0], [18.0, 27.0], [30.0, 27.0]]])


def frame(fmt: PixelFormat = PixelFormat.RGB, *, seed: int = 0) -> Frame:
    g = torch.Generator().manual_seed(seed)
    rgb = torch.randint(0, 200, (3, 48, 64), dtype=torch.uint8, generator=g)
    image = rgb if fmt is PixelFormat.RGB else rgb_to_nv12(rgb)
    f = Frame(image=image, pts=seed, time_base=Fraction(1, 30), index=seed, format=fmt)
    f.results.update(boxes=BOXES.clone(), landmarks=LANDMARKS.clone(), scores=torch.tensor([0.9]))
    return f


def test_boxes_and_landmarks_in_place() -> None:
    f = frame()
    image, before = f.image, f.image.clone()
    (out,) = run_stage(Annotate(color=(255, 255, 0), landmark_color=(0, 0, 255), landmark_radius=1), [f])
    assert isinstance(out, Frame) and out.image is image
    assert out.image[:, 8, 20].tolist() == [255, 255, 0]  # top edge
    assert out.image[:, 16, 32].tolist() == [0, 0, 255]  # a landmark
    assert torch.equal(out.image[:, 12:14, 12:14], before[:, 12:14, 12:14])  # inside, away from landmarks
    assert torch.equal(out.image[:, 40:], before[:, 40:])  # below the box


def test_landmarks_off() -> None:
    f = frame()
    before = f.image.clone()
    run_stage(Annotate(landmarks=False), [f])
    assert torch.equal(f.image[:, 16, 32], before[:, 16, 32])


def test_nv12_boxes() -> None:
    f = frame(PixelFormat.NV12)
    run_stage(Annotate(color=(0, 255, 0)), [f])
    assert nv12_to_rgb(f.image)[:, 8, 20].tolist() == pytest.approx([0, 255, 0], abs=3)


@pytest.mark.parametrize("mode", ["blur", "pixelate"])
@pytest.mark.parametrize("fmt", [PixelFormat.RGB, PixelFormat.NV12])
def test_anonymise_modes(mode: str, fmt: PixelFormat) -> None:
    f = frame(fmt)
    before = f.image.clone()
    run_stage(Annotate(mode=mode, strength=8), [f])
    rgb_after = f.image if fmt is PixelFormat.RGB else nv12_to_rgb(f.image)
    rgb_before = before if fmt is PixelFormat.RGB else nv12_to_rgb(before)
    inside_after, inside_before = rgb_after[:, 8:32, 8:40].float(), rgb_before[:, 8:32, 8:40].float()
    assert inside_after.std() < 0.5 * inside_before.std()
    assert torch.equal(rgb_after[:, 34:], rgb_before[:, 34:])  # below the box


def test_batches_frames_without_boxes_and_empty_boxes() -> None:
    a, b, c = frame(seed=1), frame(seed=2), frame(seed=3)
    del b.results["boxes"]
    c.results["boxes"] = torch.zeros(0, 4)
    before = [x.image.clone() for x in (a, b, c)]
    (out,) = run_stage(Annotate(), [Batch([a, b, c])])
    assert isinstance(out, Batch)
    assert not torch.equal(a.image, before[0])
    assert torch.equal(b.image, before[1]) and torch.equal(c.image, before[2])


def test_bad_boxes_and_config() -> None:
    f = frame()
    f.results["boxes"] = torch.zeros(3)
    with pytest.raises(ValueError, match=r"must be an \(N, 4\) tensor, got \(3,\)"):
        run_stage(Annotate(), [f])
    with pytest.raises(pydantic.ValidationError):
        Annotate(mode="sparkle")
    with pytest.raises(pydantic.ValidationError):
        Annotate(color=(0, 300, 0))


@pytest.mark.gpu
@pytest.mark.parametrize("mode", ["boxes", "blur", "pixelate"])
def test_cuda_matches_cpu(mode: str) -> None:
    cpu = frame(PixelFormat.NV12)
    gpu = frame(PixelFormat.NV12)
    gpu.image = gpu.image.cuda()
    gpu.results = {k: v.cuda() for k, v in gpu.results.items()}
    run_stage(Annotate(mode=mode), [cpu])
    (out,) = run_stage(Annotate(mode=mode), [gpu], device="cuda")
    assert isinstance(out, Frame) and out.image.is_cuda
    assert int((out.image.cpu().int() - cpu.image.int()).abs().max()) <= 1
