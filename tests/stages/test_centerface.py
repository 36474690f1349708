"""`centerface`: real CenterFace outputs (ONNX Runtime) decoded into per-frame boxes in frame pixels."""

from __future__ import annotations

from fractions import Fraction

import av
import onnxruntime as ort
import pytest
import torch

from stages.centerface import CenterFace
from stages.preprocess import Preprocess
from streamflow.detection import agreement, box_iou
from streamflow.frame import Batch, Frame
from streamflow.models import centerface as cf
from streamflow.testing import run_stage

FACE_BOX = torch.tensor([[182.0, 58.0, 270.0, 178.0]])  # in the 512x512 astronaut photo


@pytest.fixture(scope="module")
def session(tmp_path_factory: pytest.TempPathFactory) -> ort.InferenceSession:
    path = cf.reshape_model(192, 320, batch=None, dst=tmp_path_factory.mktemp("cf") / "cf.onnx")
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def scene() -> tuple[Frame, torch.Tensor]:
    """The astronaut photo pasted at (x=200, y=40) into a 360x640 frame, and its face box there."""
    data = pytest.importorskip("skimage.data")  # here: the GPU host has no scikit-image
    image = torch.full((3, 360, 640), 40, dtype=torch.uint8)
    image[:, 40:296, 200:456] = torch.from_numpy(data.astronaut()[::2, ::2].copy()).permute(2, 0, 1)
    box = FACE_BOX / 2 + torch.tensor([[200.0, 40.0, 200.0, 40.0]])
    return Frame(image=image, pts=0, time_base=Fraction(1, 30)), box


def infer(session: ort.InferenceSession, batch: Batch) -> Batch:
    assert batch.data is not None
    outs = session.run(list(cf.OUTPUT_NAMES), {cf.INPUT_NAME: batch.data.numpy()})
    batch.results.update({name: torch.from_numpy(o) for name, o in zip(cf.OUTPUT_NAMES, outs, strict=True)})
    return batch


def test_faces_are_found_in_frame_pixels(session: ort.InferenceSession) -> None:
    frame, box = scene()
    blank = Frame(image=torch.full((3, 360, 640), 90, dtype=torch.uint8), pts=1, time_base=Fraction(1, 30))
    (batch,) = run_stage(Preprocess(width=320, height=192), [Batch([frame, blank])])
    assert isinstance(batch, Batch)
    (out,) = run_stage(CenterFace(), [infer(session, batch)])
    assert isinstance(out, Batch)
    face, empty = out.frames
    assert face.results["boxes"].shape == (1, 4) and face.results["landmarks"].shape == (1, 5, 2)
    assert float(box_iou(face.results["boxes"], box)) > 0.8
    assert float(face.results["scores"][0]) > 0.5
    # A frame without faces gets empty results of the right shapes.
    assert empty.results["boxes"].shape == (0, 4) and empty.results["scores"].shape == (0,)
    assert empty.results["landmarks"].shape == (0, 5, 2)
    # Raw outputs and the model input are dropped once decoded.
    assert not set(cf.OUTPUT_NAMES) & set(out.results) and out.data is None
    assert "letterbox" not in face.results


def test_keep_outputs_and_threshold(session: ort.InferenceSession) -> None:
    frame, _ = scene()
    (batch,) = run_stage(Preprocess(width=320, height=192), [frame])
    assert isinstance(batch, Batch)
    (out,) = run_stage(CenterFace(threshold=0.99, keep_outputs=True), [infer(session, batch)])
    assert isinstance(out, Batch)
    assert set(cf.OUTPUT_NAMES) <= set(out.results) and out.data is not None
    assert "letterbox" in out.frames[0].results
    assert out.frames[0].results["boxes"].shape == (0, 4)  # nothing is that certain


def test_wrong_outputs_name_expected_and_actual() -> None:
    frame = Frame(image=torch.zeros(3, 32, 32, dtype=torch.uint8), pts=0, time_base=Fraction(1, 30))
    batch = Batch([frame], results={"output": torch.zeros(1, 1000)})
    with pytest.raises(
        cf.OutputMismatchError, match=r"missing \['537', '538', '539', '540'\].*got 'output': \(1, 1000\)"
    ):
        run_stage(CenterFace(), [batch])
    z = torch.zeros(1, 2, 8, 8)
    renamed = Batch([frame], results={"hm": torch.zeros(1, 1, 8, 8), "s": z, "o": z, "lm": torch.zeros(1, 10, 4, 4)})
    with pytest.raises(cf.OutputMismatchError, match=r"shapes don't match.*'lm': \(1, 10, 4, 4\)"):
        run_stage(CenterFace(outputs=("hm", "s", "o", "lm")), [renamed])


@pytest.mark.gpu
def test_cuda_matches_cpu(session: ort.InferenceSession) -> None:
    with av.open(str(cf.MODEL_PATH.parents[1] / "samples" / "faces.mp4")) as container:
        decoded = next(container.decode(video=0))
    image = torch.from_numpy(decoded.to_ndarray(format="rgb24")).permute(2, 0, 1).contiguous()
    boxes = {}
    for device in ("cpu", "cuda"):
        frame = Frame(image=image.clone(), pts=0, time_base=Fraction(1, 30))
        (batch,) = run_stage(Preprocess(width=320, height=192), [frame])
        assert isinstance(batch, Batch)
        infer(session, batch)
        batch.results = {k: v.to(device) for k, v in batch.results.items()}
        (out,) = run_stage(CenterFace(threshold=0.3), [batch], device=device)
        assert isinstance(out, Batch)
        boxes[device] = out.frames[0].results["boxes"]
    assert boxes["cuda"].is_cuda and len(boxes["cpu"]) >= 1
    same = agreement([boxes["cpu"]], [boxes["cuda"].cpu()])
    assert same.only_a == same.only_b == 0 and same.min_iou > 0.99, str(same)
