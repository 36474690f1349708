"""Face detection accuracy on the shipped sample (samples/faces.mp4) against its true boxes.

preprocess (letterbox 1280x720 -> 384x640) -> CenterFace -> centerface decode, on the CPU with ONNX
Runtime, and on the GPU with the same model through onnx2torch in fp32 and fp16. Targets: recall and
precision >= 0.95 at IoU >= 0.5 (CPU, GPU fp32, GPU fp16); the GPU's fp32 boxes match the CPU's at
IoU >= 0.9. UltraFace (preprocess as configs/face_detect_ultraface.yaml -> ultraface decode) is held
to the same targets, CPU and GPU.

To stay quick on CI's two cores the CPU test scores every second frame (60 frames, 180 faces);
`STREAMFLOW_ACCURACY_STEP=1` scores all 120.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import av
import onnx
import onnxruntime as ort
import pytest
import torch

from stages.centerface import CenterFace
from stages.preprocess import Preprocess
from stages.ultraface import UltraFace
from streamflow.config import build_pipeline, build_stage, load_config
from streamflow.detection import agreement, precision_recall
from streamflow.frame import Batch, Frame, PixelFormat
from streamflow.inference.onnx_tools import with_opset_at_least, with_static_input_shape
from streamflow.models import centerface as cf
from streamflow.models import ultraface as uf
from streamflow.testing import run_stage
from streamflow.video.synth import write_clip

ROOT = Path(__file__).resolve().parents[1]
CLIP = ROOT / "samples" / "faces.mp4"
TRUTH = ROOT / "samples" / "faces_boxes.json"
ULTRAFACE_CONFIG = ROOT / "configs" / "face_detect_ultraface.yaml"
HEIGHT, WIDTH = 384, 640
STEP = int(os.environ.get("STREAMFLOW_ACCURACY_STEP", "2"))
BATCH = 8


def sample_frames(clip: Path = CLIP, step: int = STEP) -> list[Frame]:
    """Every `step`-th frame of a clip as NV12 (as the decoder delivers them), index = frame number."""
    frames = []
    with av.open(str(clip)) as container:
        stream = container.streams.video[0]
        for i, decoded in enumerate(container.decode(stream)):
            if i % step:
                continue
            nv12 = torch.from_numpy(decoded.to_ndarray(format="nv12"))
            tb = stream.time_base
            assert tb is not None
            frames.append(Frame(image=nv12, pts=decoded.pts, time_base=tb, index=i, format=PixelFormat.NV12))
    return frames


def true_boxes(frames: list[Frame]) -> list[torch.Tensor]:
    truth = json.loads(TRUTH.read_text())
    by_index = {f["index"]: torch.tensor(f["boxes"]).reshape(-1, 4) for f in truth["frames"]}
    return [by_index[f.index] for f in frames]


def detect(frames: list[Frame], run_model, device: str, model: str = "centerface") -> list[Frame]:  # type: ignore[no-untyped-def]
    """preprocess -> model -> decode over `frames` in batches; returns the frames with results.

    `model` "centerface" or "ultraface"; UltraFace's preprocess and decode settings are the shipped config's.
    """
    batches = [Batch(frames[i : i + BATCH]) for i in range(0, len(frames), BATCH)]
    if model == "ultraface":
        specs = {s.name: s for s in load_config(ULTRAFACE_CONFIG).stages}
        prepare, postprocess = build_stage(specs["preprocess"]), build_stage(specs["faces"])
        assert isinstance(postprocess, UltraFace)
    else:
        prepare, postprocess = Preprocess(width=WIDTH, height=HEIGHT), CenterFace()
    prepared = run_stage(prepare, batches, device=device)
    for batch in prepared:
        assert isinstance(batch, Batch) and batch.data is not None
        batch.results.update(run_model(batch.data))
    decoded = run_stage(postprocess, prepared, device=device)
    return [frame for batch in decoded for frame in batch.frames]


def onnxruntime_model(tmp: Path):  # type: ignore[no-untyped-def]
    path = cf.reshape_model(HEIGHT, WIDTH, batch=None, dst=tmp / "centerface.onnx")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])

    def run_model(x: torch.Tensor) -> dict[str, torch.Tensor]:
        outs = session.run(list(cf.OUTPUT_NAMES), {cf.INPUT_NAME: x.numpy()})
        return {name: torch.from_numpy(o) for name, o in zip(cf.OUTPUT_NAMES, outs, strict=True)}

    return run_model


@pytest.fixture(scope="module")
def cpu_model(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    return onnxruntime_model(tmp_path_factory.mktemp("cf"))


@pytest.fixture(scope="module")
def cpu_detections(cpu_model) -> list[Frame]:  # type: ignore[no-untyped-def]
    return detect(sample_frames(), cpu_model, "cpu")


def test_sample_and_truth_agree() -> None:
    truth = json.loads(TRUTH.read_text())
    with av.open(str(CLIP)) as container:
        stream = container.streams.video[0]
        assert (stream.codec_context.name, stream.width, stream.height) == ("h264", truth["width"], truth["height"])
        assert stream.frames == len(truth["frames"]) == 120
    heights = [b[3] - b[1] for f in truth["frames"] for b in f["boxes"]]
    assert min(heights) >= 40 and all(len(f["boxes"]) == 3 for f in truth["frames"])
    assert CLIP.stat().st_size < 3_000_000


def test_cpu_recall_and_precision(cpu_detections: list[Frame]) -> None:
    pred = [f.results["boxes"] for f in cpu_detections]
    scores = [f.results["scores"] for f in cpu_detections]
    result = precision_recall(pred, true_boxes(cpu_detections), iou_threshold=0.5, scores=scores)
    print(f"CPU (ONNX Runtime, {len(pred)} frames): {result}")
    assert result.recall >= 0.95, str(result)
    assert result.precision >= 0.95, str(result)


def test_clip_without_faces_gives_empty_lists(cpu_model, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    clip = write_clip(tmp_path / "no_faces.mp4", width=320, height=240, frames=8, pattern="testsrc")
    frames = detect(sample_frames(clip, 1), cpu_model, "cpu")
    assert len(frames) == 8
    for frame in frames:
        assert frame.results["boxes"].shape == (0, 4)
        assert frame.results["scores"].shape == (0,)
        assert frame.results["landmarks"].shape == (0, 5, 2)


def gpu_boxes(model: torch.nn.Module, dtype: torch.dtype) -> list[torch.Tensor]:
    """Boxes per sample frame from preprocess -> `model` (onnx2torch, on CUDA) in `dtype` -> centerface."""
    model = model.to(dtype)

    @torch.inference_mode()
    def run_model(x: torch.Tensor) -> dict[str, torch.Tensor]:
        outputs = dict(zip(cf.OUTPUT_NAMES, model(x.to(dtype)), strict=True))
        # The model ran on this thread's default stream; the centerface stage reads on its own.
        torch.cuda.synchronize()
        return outputs

    frames = detect(sample_frames(), run_model, "cuda")
    assert frames[0].results["boxes"].is_cuda
    return [f.results["boxes"].cpu() for f in frames]


@pytest.mark.gpu
def test_gpu_matches_cpu_and_truth(
    cpu_detections: list[Frame], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import onnx2torch

    path = cf.reshape_model(HEIGHT, WIDTH, batch=None, dst=tmp_path / "centerface.onnx")
    model = onnx2torch.convert(onnx.load(str(path))).eval().cuda()
    truth = true_boxes(cpu_detections)
    cpu = [f.results["boxes"] for f in cpu_detections]

    # Like with like first: fp32 on both. cuDNN convolutions default to TF32 (10-bit mantissa) on
    # Ampere and later, which is not fp32.
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    fp32 = gpu_boxes(model, torch.float32)
    monkeypatch.undo()
    result = precision_recall(fp32, truth, iou_threshold=0.5)
    same = agreement(cpu, fp32, iou_threshold=0.5)
    print(f"GPU (onnx2torch fp32): {result}; CPU vs GPU: {same}")
    # Then torch's defaults (TF32 convolutions), which is what an fp32 pipeline on the GPU runs.
    tf32 = gpu_boxes(model, torch.float32)
    result_tf32 = precision_recall(tf32, truth, iou_threshold=0.5)
    same_tf32 = agreement(cpu, tf32, iou_threshold=0.5)
    print(f"GPU (onnx2torch fp32, TF32 convolutions): {result_tf32}; CPU vs GPU: {same_tf32}")
    # fp16 (for speed) is held to the accuracy targets against the truth; its agreement with the CPU
    # is reported, not required: fp16 rounding can move a heatmap peak by one cell (IoU 0.92 seen).
    fp16 = gpu_boxes(model, torch.float16)
    result16 = precision_recall(fp16, truth, iou_threshold=0.5)
    print(f"GPU (onnx2torch fp16): {result16}; CPU vs GPU: {agreement(cpu, fp16, iou_threshold=0.5)}")

    for name, res, agree in (("fp32", result, same), ("fp32/TF32", result_tf32, same_tf32)):
        assert res.recall >= 0.95 and res.precision >= 0.95, f"{name}: {res}"
        assert agree.only_a == 0 and agree.only_b == 0, f"{name}: {agree}"
        assert agree.min_iou >= 0.9, f"{name}: {agree}"
    assert result16.recall >= 0.95 and result16.precision >= 0.95, f"fp16: {result16}"


# -- UltraFace version-RFB-640, preprocessing and decoding as configs/face_detect_ultraface.yaml --------


def ultraface_onnxruntime_model(tmp: Path):  # type: ignore[no-untyped-def]
    path = tmp / "ultraface.onnx"
    onnx.save(with_static_input_shape(uf.MODEL_PATH, {uf.INPUT_NAME: ["N", 3, *uf.INPUT_HW]}), str(path))
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])

    def run_model(x: torch.Tensor) -> dict[str, torch.Tensor]:
        outs = session.run(list(uf.OUTPUT_NAMES), {uf.INPUT_NAME: x.numpy()})
        return {name: torch.from_numpy(o) for name, o in zip(uf.OUTPUT_NAMES, outs, strict=True)}

    return run_model


@pytest.fixture(scope="module")
def ultraface_cpu_detections(tmp_path_factory: pytest.TempPathFactory) -> list[Frame]:
    return detect(sample_frames(), ultraface_onnxruntime_model(tmp_path_factory.mktemp("uf")), "cpu", "ultraface")


def test_ultraface_cpu_recall_and_precision(ultraface_cpu_detections: list[Frame], cpu_detections: list[Frame]) -> None:
    frames = ultraface_cpu_detections
    pred = [f.results["boxes"] for f in frames]
    result = precision_recall(pred, true_boxes(frames), iou_threshold=0.5, scores=[f.results["scores"] for f in frames])
    centerface = precision_recall(
        [f.results["boxes"] for f in cpu_detections], true_boxes(cpu_detections), iou_threshold=0.5
    )
    print(f"CPU (ONNX Runtime, {len(pred)} frames): UltraFace {result}; CenterFace {centerface}")
    assert result.recall >= 0.95, str(result)
    assert result.precision >= 0.95, str(result)
    for frame in frames:  # the same result keys as centerface's, so annotate and jsonl take either
        assert frame.results["landmarks"].shape == (len(frame.results["boxes"]), 0, 2)
        assert "letterbox" not in frame.results


@pytest.mark.gpu
def test_ultraface_gpu_fp32_and_fp16(ultraface_cpu_detections: list[Frame], tmp_path: Path) -> None:
    import onnx2torch

    path = tmp_path / "ultraface.onnx"
    onnx.save(with_static_input_shape(uf.MODEL_PATH, {uf.INPUT_NAME: ["N", 3, *uf.INPUT_HW]}), str(path))
    # As the torch backend does: the opset-9 export is converted up first (onnx2torch lacks Slice-1).
    model = onnx2torch.convert(with_opset_at_least(onnx.load(str(path)), 13)).eval().cuda()
    cpu = [f.results["boxes"] for f in ultraface_cpu_detections]
    truth = true_boxes(ultraface_cpu_detections)
    for dtype in (torch.float32, torch.float16):
        typed = model.to(dtype)

        @torch.inference_mode()
        def run_model(
            x: torch.Tensor, typed: torch.nn.Module = typed, dtype: torch.dtype = dtype
        ) -> dict[str, torch.Tensor]:
            outputs = dict(zip(uf.OUTPUT_NAMES, typed(x.to(dtype)), strict=True))
            torch.cuda.synchronize()  # the model ran on this thread's stream; the decoder reads on its own
            return outputs

        frames = detect(sample_frames(), run_model, "cuda", "ultraface")
        assert frames[0].results["boxes"].is_cuda
        boxes = [f.results["boxes"].cpu() for f in frames]
        result = precision_recall(boxes, truth, iou_threshold=0.5)
        print(f"GPU UltraFace (onnx2torch {dtype}): {result}; CPU vs GPU: {agreement(cpu, boxes, iou_threshold=0.5)}")
        assert result.recall >= 0.95 and result.precision >= 0.95, f"{dtype}: {result}"


def test_ultraface_config_runs_end_to_end(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """configs/face_detect_ultraface.yaml as shipped: annotate draws and jsonl writes UltraFace's results."""
    monkeypatch.setenv("FACES_OUT", str(tmp_path))
    monkeypatch.chdir(ROOT)
    config = load_config(ULTRAFACE_CONFIG).model_copy(update={"device": "cpu", "max_frames": 16})
    build_pipeline(config).run_sync()
    lines = [json.loads(line) for line in (tmp_path / "face_detect_ultraface.jsonl").read_text().splitlines()]
    assert [line["index"] for line in lines] == list(range(16))
    assert all(len(line["results"]["boxes"]) == 3 and line["results"]["landmarks"] == [[]] * 3 for line in lines)
    with av.open(str(tmp_path / "face_detect_ultraface.mp4")) as container:
        assert sum(1 for _ in container.decode(video=0)) == 16
