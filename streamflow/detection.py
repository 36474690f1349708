"""Compare detections: box IoU matching, precision/recall against ground truth, and agreement of two runs.

Used by the accuracy tests (CenterFace on the face sample against its true boxes) and to check that the
CPU and GPU pipelines find the same faces. Evaluation code, not the hot path: a plain greedy matcher.

Example:
    >>> import torch
    >>> truth = [torch.tensor([[0.0, 0.0, 10.0, 10.0]])]
    >>> pred = [torch.tensor([[1.0, 0.0, 11.0, 10.0], [50.0, 50.0, 60.0, 60.0]])]
    >>> r = precision_recall(pred, truth, iou_threshold=0.5)
    >>> (r.true_positives, r.false_positives, r.false_negatives, r.recall)
    (1, 1, 0, 1.0)
"""

from __future__ import annotations

import functools
import importlib.util
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from streamflow.frame import Batch, Frame
from streamflow.ops.resize import Letterbox

__all__ = [
    "Agreement",
    "Match",
    "PrecisionRecall",
    "agreement",
    "attach_detections",
    "batched_nms",
    "box_iou",
    "frame_letterboxes",
    "load_nms",
    "match_boxes",
    "nms_per_frame",
    "precision_recall",
    "to_source_pixels",
    "transform_table",
]

log = logging.getLogger(__name__)


def box_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """IoU matrix (len(a), len(b)) of xyxy boxes, computed in float32 on `a`'s device.

    Example:
        >>> import torch
        >>> box_iou(torch.tensor([[0.0, 0.0, 2.0, 2.0]]), torch.tensor([[1.0, 0.0, 3.0, 2.0]])).tolist()
        [[0.3333333432674408]]
    """
    a = a.float().reshape(-1, 4)
    b = b.float().reshape(-1, 4).to(a.device)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    top_left = torch.maximum(a[:, None, :2], b[None, :, :2])
    bottom_right = torch.minimum(a[:, None, 2:], b[None, :, 2:])
    overlap = (bottom_right - top_left).clamp(min=0).prod(dim=-1)
    return overlap / (area_a[:, None] + area_b[None, :] - overlap)


@functools.cache
def load_nms() -> Callable[[torch.Tensor, torch.Tensor, float], torch.Tensor]:
    """torchvision's compiled NMS operator (CPU and CUDA), loaded without its Python package.

    `import torchvision.ops` imports the whole package (models, datasets, transforms, PIL): 1.8 s on
    an idle 2-core machine and 4.7 s on a busy one, most of a CPU run's start-up, where loading the
    operator library alone takes milliseconds. A library that isn't where it is expected is
    loaded the package's way (same operator, slower start). Detector stages call this in `setup`.
    """
    try:
        return torch.ops.torchvision.nms  # type: ignore[no-any-return]  # registered already
    except (AttributeError, RuntimeError):
        pass
    spec = importlib.util.find_spec("torchvision")
    folder = Path(spec.origin).parent if spec is not None and spec.origin else None
    libraries = sorted(folder.glob("_C*.so")) + sorted(folder.glob("_C*.pyd")) if folder is not None else []
    for library in libraries:
        try:
            torch.ops.load_library(str(library))
            return torch.ops.torchvision.nms  # type: ignore[no-any-return]
        except (OSError, RuntimeError, AttributeError) as error:
            log.debug("torchvision operators not loaded from %s (%s); importing the package", library, error)
    import torchvision.ops  # noqa: F401  # registers the operators

    return torch.ops.torchvision.nms  # type: ignore[no-any-return]


def batched_nms(boxes: torch.Tensor, scores: torch.Tensor, groups: torch.Tensor, iou: float) -> torch.Tensor:
    """Indices of the boxes kept by NMS within each group, by descending score (torchvision's
    `batched_nms`): each group's boxes are shifted apart so that no two groups overlap, then one NMS.

    Example:
        >>> b = torch.tensor([[0.0, 0, 10, 10], [1, 0, 11, 10], [0, 0, 10, 10]])
        >>> batched_nms(b, torch.tensor([0.9, 0.8, 0.7]), torch.tensor([0, 0, 1]), 0.3).tolist()
        [0, 2]
    """
    if boxes.numel() == 0:
        return torch.empty(0, dtype=torch.int64, device=boxes.device)
    shift = groups.to(boxes) * (boxes.max() + 1)
    return load_nms()(boxes + shift[:, None], scores, iou)


@dataclass(frozen=True, slots=True)
class Match:
    """Pairs of indices (pred, truth) matched at IoU >= the threshold, with their IoUs."""

    pairs: list[tuple[int, int]]
    ious: list[float]
    unmatched_pred: list[int]
    unmatched_truth: list[int]


def match_boxes(
    pred: torch.Tensor, truth: torch.Tensor, *, iou_threshold: float = 0.5, scores: torch.Tensor | None = None
) -> Match:
    """Greedy one-to-one matching: predictions in descending score order (given order without
    scores) each take the unmatched true box they overlap most, if that IoU reaches the threshold
    (the PASCAL VOC rule).

    Example:
        >>> import torch
        >>> m = match_boxes(torch.tensor([[0.0, 0, 10, 10]]), torch.tensor([[0.0, 0, 10, 9], [20.0, 20, 30, 30]]))
        >>> m.pairs, m.unmatched_truth
        ([(0, 0)], [1])
    """
    iou = box_iou(pred, truth).cpu()
    n_pred, n_truth = iou.shape
    order = list(range(n_pred)) if scores is None else scores.float().cpu().argsort(descending=True).tolist()
    taken = torch.zeros(n_truth, dtype=torch.bool)
    pairs: list[tuple[int, int]] = []
    ious: list[float] = []
    for p in order:
        if n_truth == 0:
            break
        row = iou[p].masked_fill(taken, -1.0)
        best = int(row.argmax())
        if float(row[best]) >= iou_threshold:
            taken[best] = True
            pairs.append((p, best))
            ious.append(float(row[best]))
    matched_pred = {p for p, _ in pairs}
    return Match(
        pairs=pairs,
        ious=ious,
        unmatched_pred=[p for p in range(n_pred) if p not in matched_pred],
        unmatched_truth=[t for t in range(n_truth) if not taken[t]],
    )


@dataclass(frozen=True, slots=True)
class PrecisionRecall:
    """Detection counts over a set of frames at one IoU threshold."""

    true_positives: int
    false_positives: int
    false_negatives: int
    mean_iou: float  # over the true positives; 0.0 when there are none

    @property
    def precision(self) -> float:
        found = self.true_positives + self.false_positives
        return self.true_positives / found if found else 1.0

    @property
    def recall(self) -> float:
        present = self.true_positives + self.false_negatives
        return self.true_positives / present if present else 1.0

    def __str__(self) -> str:
        return (
            f"precision {self.precision:.4f} recall {self.recall:.4f} "
            f"(tp {self.true_positives}, fp {self.false_positives}, fn {self.false_negatives}, "
            f"mean IoU {self.mean_iou:.3f})"
        )


def precision_recall(
    pred: Sequence[torch.Tensor],
    truth: Sequence[torch.Tensor],
    *,
    iou_threshold: float = 0.5,
    scores: Sequence[torch.Tensor] | None = None,
) -> PrecisionRecall:
    """Precision and recall over frames: `pred[i]` and `truth[i]` are the (K, 4) xyxy boxes of frame i.

    Example:
        >>> import torch
        >>> str(precision_recall([torch.zeros(0, 4)], [torch.tensor([[0.0, 0, 5, 5]])]))
        'precision 1.0000 recall 0.0000 (tp 0, fp 0, fn 1, mean IoU 0.000)'
    """
    if len(pred) != len(truth):
        raise ValueError(f"precision_recall: {len(pred)} predicted frames but {len(truth)} true frames")
    tp = fp = fn = 0
    iou_sum = 0.0
    for i, (p, t) in enumerate(zip(pred, truth, strict=True)):
        m = match_boxes(p, t, iou_threshold=iou_threshold, scores=None if scores is None else scores[i])
        tp += len(m.pairs)
        fp += len(m.unmatched_pred)
        fn += len(m.unmatched_truth)
        iou_sum += sum(m.ious)
    return PrecisionRecall(tp, fp, fn, iou_sum / tp if tp else 0.0)


@dataclass(frozen=True, slots=True)
class Agreement:
    """How two detectors' boxes (for example CPU and GPU runs) correspond over frames."""

    matched: int
    only_a: int
    only_b: int
    min_iou: float  # lowest IoU among matched pairs (1.0 when nothing matched)
    mean_iou: float

    @property
    def fraction(self) -> float:
        """Matched boxes over all distinct boxes (1.0 = identical sets)."""
        total = self.matched + self.only_a + self.only_b
        return self.matched / total if total else 1.0

    def __str__(self) -> str:
        return (
            f"matched {self.matched}, only in a {self.only_a}, only in b {self.only_b}, "
            f"IoU min {self.min_iou:.3f} mean {self.mean_iou:.3f}"
        )


def agreement(a: Sequence[torch.Tensor], b: Sequence[torch.Tensor], *, iou_threshold: float = 0.5) -> Agreement:
    """Match two runs' boxes frame by frame (IoU >= `iou_threshold` pairs them) and summarise.

    Check `min_iou` (for example >= 0.9) for "the same boxes", and `only_a`/`only_b` for faces
    one run found and the other did not.

    Example:
        >>> import torch
        >>> str(agreement([torch.tensor([[0.0, 0, 10, 10]])], [torch.tensor([[0.0, 0, 10, 10.5]])]))
        'matched 1, only in a 0, only in b 0, IoU min 0.952 mean 0.952'
    """
    if len(a) != len(b):
        raise ValueError(f"agreement: {len(a)} frames against {len(b)}")
    matched = only_a = only_b = 0
    ious: list[float] = []
    for boxes_a, boxes_b in zip(a, b, strict=True):
        m = match_boxes(boxes_a, boxes_b, iou_threshold=iou_threshold)
        matched += len(m.pairs)
        only_a += len(m.unmatched_pred)
        only_b += len(m.unmatched_truth)
        ious.extend(m.ious)
    return Agreement(matched, only_a, only_b, min(ious) if ious else 1.0, sum(ious) / len(ious) if ious else 1.0)


# -- shared by the detectors' batched decoders (CenterFace, UltraFace) ---------------------------------


def transform_table(
    transforms: Sequence[Letterbox] | None, n: int, input_hw: tuple[int, int], device: torch.device
) -> torch.Tensor:
    """(n, 6) float32 per frame: scale_x, scale_y, offset_x, offset_y, source width, source height.

    Without `transforms` the model input is the frame (identity mapping, `input_hw` as its size).

    Example:
        >>> transform_table(None, 2, (4, 8), torch.device("cpu")).tolist()[1]
        [1.0, 1.0, 0.0, 0.0, 8.0, 4.0]
    """
    if transforms is None:
        h, w = input_hw
        return torch.tensor([[1.0, 1.0, 0.0, 0.0, float(w), float(h)]], device=device).expand(n, 6)
    if len(transforms) != n:
        raise ValueError(f"decode: {len(transforms)} transforms for a batch of {n} frames")
    rows = [[t.scale_x, t.scale_y, t.offset_x, t.offset_y, float(t.width), float(t.height)] for t in transforms]
    # A few dozen bytes per batch, built on the host where the Letterbox values live.
    return torch.tensor(rows, dtype=torch.float32).to(device, non_blocking=True)


def to_source_pixels(boxes: torch.Tensor, table_rows: torch.Tensor) -> torch.Tensor:
    """Model-input xyxy boxes (K, 4) -> source pixels, clipped to the frame; `table_rows` is (K, 6).

    Example:
        >>> row = torch.tensor([[0.5, 0.5, 0.0, 10.0, 100.0, 100.0]])
        >>> to_source_pixels(torch.tensor([[10.0, 20.0, 80.0, 70.0]]), row).tolist()
        [[20.0, 20.0, 100.0, 100.0]]
    """
    sxy, oxy, size = table_rows[:, 0:2], table_rows[:, 2:4], table_rows[:, 4:6]
    out = (boxes - oxy.repeat(1, 2)) / sxy.repeat(1, 2)
    return torch.minimum(out.clamp(min=0), size.repeat(1, 2))


def nms_per_frame(
    boxes: torch.Tensor, scores: torch.Tensor, frame: torch.Tensor, n: int, iou: float, *extra: torch.Tensor
) -> list[tuple[torch.Tensor, ...]]:
    """NMS within each frame of a batch, then split into `n` per-frame tuples (boxes, scores, *extra).

    `frame` (K,) is each candidate's frame index; rows of every tensor in `extra` follow the
    candidates. One `batched_nms` call for the whole batch, on the tensors' device; each frame's
    detections come out by descending score. The only host sync is the per-frame count.

    Example:
        >>> b = torch.tensor([[0.0, 0, 10, 10], [1, 0, 11, 10], [0, 0, 10, 10]])
        >>> out = nms_per_frame(b, torch.tensor([0.9, 0.8, 0.7]), torch.tensor([0, 0, 1]), 3, 0.3)
        >>> [len(o[0]) for o in out]
        [1, 1, 0]
    """
    keep = batched_nms(boxes, scores, frame, iou)
    # batched_nms returns by descending score; a stable sort by frame keeps that order per frame.
    keep = keep[torch.sort(frame[keep], stable=True).indices]
    counts = torch.bincount(frame[keep], minlength=n).tolist()
    parts = [t[keep].split(counts) for t in (boxes, scores, *extra)]
    return list(zip(*parts, strict=True))


def frame_letterboxes(frames: Sequence[Frame], key: str, stage: str) -> list[Letterbox] | None:
    """Each frame's `Letterbox` (set by preprocess under `key`), or None when no frame has one.

    Some frames with one and some without is an error naming `stage`: their boxes would land in
    two coordinate systems.
    """
    found = [f.results.get(key) for f in frames]
    have = [isinstance(t, Letterbox) for t in found]
    if any(have) and not all(have):
        raise ValueError(f"{stage}: some frames lack results[{key!r}] (set by preprocess)")
    return found if all(have) else None  # type: ignore[return-value]


def attach_detections(
    item: Frame | Batch, detections: Sequence[Any], *, outputs: Sequence[str], letterbox_key: str, keep_outputs: bool
) -> int:
    """Put each frame's boxes, scores and landmarks in its results; return how many were found.

    Unless `keep_outputs`, the raw model outputs, the batch's model input and the frames' letterbox
    mapping are dropped: boxes are in frame pixels now, and the rest is large or noise in every
    JSON line.
    """
    found = 0
    for frame, det in zip(item.frames, detections, strict=True):
        frame.results["boxes"] = det.boxes
        frame.results["scores"] = det.scores
        frame.results["landmarks"] = det.landmarks
        found += len(det)
    if not keep_outputs:
        for name in outputs:
            del item.results[name]
        if isinstance(item, Batch):
            item.data = None
        for frame in item.frames:
            frame.results.pop(letterbox_key, None)
    return found
