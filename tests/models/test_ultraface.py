"""UltraFace version-RFB-640: the shipped file, its prior boxes, and the batched torch decoder.

The decoder is checked against a reference written here in NumPy, one frame at a time (priors from
the training recipe in loops, SSD decoding of the graph's raw locations, greedy NMS, letterbox undo),
on real model outputs for frames of the face sample.
"""

from __future__ import annotations

import hashlib
import math

import av
import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import numpy_helper

from stages.ultraface import UltraFace
from streamflow.frame import Batch
from streamflow.inference.onnx_tools import with_static_input_shape
from streamflow.models import ultraface as uf
from streamflow.models.centerface import OutputMismatchError
from streamflow.ops.resize import InputTransform, letterbox_resize
from streamflow.testing import make_frames, run_stage

SAMPLE = uf.MODEL_PATH.parents[1] / "samples" / "faces.mp4"
SHA256 = "8f4c659275977e7a3bfbfa339a9c769ad793df50f9c0baa8c14b11baa1646430"
LOCATIONS = "460"  # the graph's raw SSD regression, (1, P, 4), before its own decoding


def test_shipped_file_is_the_upstream_one() -> None:
    assert hashlib.sha256(uf.MODEL_PATH.read_bytes()).hexdigest() == SHA256
    assert (uf.MODEL_PATH.parent / "ULTRAFACE_LICENSE").read_text().count("MIT License") == 1


def test_priors_are_the_ones_baked_into_the_graph() -> None:
    constants = {
        n.output[0]: numpy_helper.to_array(n.attribute[0].t)
        for n in onnx.load(str(uf.MODEL_PATH)).graph.node
        if n.op_type == "Constant"
    }
    baked = [c.reshape(-1, 2) for c in constants.values() if c.size == 17640 * 2]
    ours = uf.priors().numpy()
    assert any(np.array_equal(c, ours[:, :2]) for c in baked)  # centres
    assert any(np.array_equal(c, ours[:, 2:]) for c in baked)  # sizes


def reference_priors(height: int, width: int) -> np.ndarray:
    out = []
    for stride, sizes in ((8, (10, 16, 24)), (16, (32, 48)), (32, (64, 96)), (64, (128, 192, 256))):
        rows, cols = math.ceil(height / stride), math.ceil(width / stride)
        for r in range(rows):
            for c in range(cols):
                for s in sizes:
                    out.append([(c + 0.5) / cols, (r + 0.5) / rows, s / width, s / height])
    return np.clip(np.array(out, dtype=np.float64), 0.0, 1.0)


def reference_decode(scores, locations, lb, threshold: float, iou: float) -> np.ndarray:  # type: ignore[no-untyped-def]
    """One frame: (P, 2) scores, (P, 4) raw locations -> (K, 4) boxes in source pixels, best first."""
    pri = reference_priors(480, 640)
    centre = pri[:, :2] + locations[:, :2] * 0.1 * pri[:, 2:]
    size = pri[:, 2:] * np.exp(locations[:, 2:] * 0.2)
    boxes = np.concatenate([centre - size / 2, centre + size / 2], 1) * [640, 480, 640, 480]
    boxes = (boxes - [lb.offset_x, lb.offset_y] * 2) / ([lb.scale_x, lb.scale_y] * 2)
    boxes = np.minimum(np.maximum(boxes, 0), [lb.width, lb.height, lb.width, lb.height])
    keep = scores[:, 1] > threshold
    boxes, prob = boxes[keep], scores[keep, 1]
    order = list(np.argsort(-prob))
    picked = []
    while order:
        best = order.pop(0)
        picked.append(best)
        rest = []
        for j in order:
            a, b = boxes[best], boxes[j]
            w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
            h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
            inter = w * h
            union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
            if inter / union <= iou:
                rest.append(j)
        order = rest
    return boxes[picked]


@pytest.fixture(scope="module")
def outputs(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """Real outputs (scores, decoded boxes, raw locations) for 3 sample frames, and their letterboxes."""
    # Weights out of the input list (ONNX Runtime warns about each one otherwise); shapes unchanged.
    model = with_static_input_shape(uf.MODEL_PATH, {uf.INPUT_NAME: [1, 3, *uf.INPUT_HW]})
    model.graph.output.append(onnx.helper.make_tensor_value_info(LOCATIONS, onnx.TensorProto.FLOAT, None))
    path = tmp_path_factory.mktemp("uf") / "uf.onnx"
    onnx.save(model, str(path))
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    with av.open(str(SAMPLE)) as container:
        images = [f.to_ndarray(format="rgb24") for i, f in enumerate(container.decode(video=0)) if i in (0, 20, 40)]
    x, lb = letterbox_resize(
        torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2),
        (480, 640),
        InputTransform(mean=(127.0,) * 3, std=(128.0,) * 3),
    )
    rows = [session.run(None, {uf.INPUT_NAME: x[i : i + 1].numpy()}) for i in range(len(images))]
    scores, boxes, locations = (torch.from_numpy(np.concatenate([r[k] for r in rows])) for k in range(3))
    return scores, boxes, locations, [lb] * len(images)


@pytest.mark.parametrize("encoding", list(uf.BoxEncoding))
def test_decoder_matches_reference_within_a_pixel(outputs, encoding: uf.BoxEncoding) -> None:  # type: ignore[no-untyped-def]
    scores, boxes, locations, lbs = outputs
    given = boxes if encoding is uf.BoxEncoding.CORNERS else locations
    dets = uf.decode(scores, given, threshold=0.7, nms_iou=0.3, transforms=lbs, encoding=encoding)
    for i, det in enumerate(dets):
        ref = reference_decode(scores[i].double().numpy(), locations[i].double().numpy(), lbs[i], 0.7, 0.3)
        assert len(det) == len(ref) >= 3
        assert np.abs(det.boxes.numpy() - ref).max() <= 1.0
        assert torch.all(det.scores[:-1] >= det.scores[1:])
        assert det.landmarks.shape == (len(det), 0, 2)


def test_stage_decodes_a_batch_and_drops_the_raw_outputs(outputs) -> None:  # type: ignore[no-untyped-def]
    scores, boxes, _, lbs = outputs
    frames = make_frames(len(lbs), height=720, width=1280)
    for frame, lb in zip(frames, lbs, strict=True):
        frame.results["letterbox"] = lb
    batch = Batch(frames, data=torch.zeros(1), results={"scores": scores, "boxes": boxes})
    (out,) = run_stage(UltraFace(threshold=0.9), [batch])
    assert out.results == {} and out.data is None
    assert [len(f.results["boxes"]) for f in out.frames] == [3, 3, 3]  # the sample has 3 faces per frame


def test_other_outputs_fail_with_the_expected_names() -> None:
    batch = Batch(make_frames(1), results={"scores": torch.zeros(1, 5, 2), "boxes": torch.zeros(1, 5, 3)})
    with pytest.raises(OutputMismatchError, match=r"'boxes': \(N, P, 4\)"):
        run_stage(UltraFace(), [batch])
    locations = Batch(make_frames(1), results={"scores": torch.ones(1, 5, 2), "boxes": torch.zeros(1, 5, 4)})
    with pytest.raises(OutputMismatchError, match="17640 priors"):
        run_stage(UltraFace(boxes="locations"), [locations])
