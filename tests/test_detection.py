"""Box IoU, greedy matching, precision/recall and run-to-run agreement."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from streamflow.detection import agreement, box_iou, match_boxes, precision_recall


def test_box_iou_values_and_empty() -> None:
    a = torch.tensor([[0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 5.0, 10.0]])
    b = torch.tensor([[0.0, 0.0, 10.0, 10.0], [20.0, 20.0, 30.0, 30.0]])
    assert box_iou(a, b).tolist() == [[1.0, 0.0], [0.5, 0.0]]
    assert box_iou(torch.zeros(0, 4), b).shape == (0, 2)
    assert box_iou(a, torch.zeros(0, 4)).shape == (2, 0)


def test_match_is_one_to_one_and_follows_scores() -> None:
    truth = torch.tensor([[0.0, 0.0, 10.0, 10.0]])
    pred = torch.tensor([[0.0, 0.0, 10.0, 9.0], [0.0, 0.0, 10.0, 10.0]])
    # Without scores the first prediction claims the face; the exact duplicate becomes a false positive.
    m = match_boxes(pred, truth)
    assert m.pairs == [(0, 0)] and m.unmatched_pred == [1]
    # With scores the higher-scored one claims it.
    m = match_boxes(pred, truth, scores=torch.tensor([0.6, 0.9]))
    assert m.pairs == [(1, 0)] and m.ious == [1.0] and m.unmatched_pred == [0]


def test_match_threshold() -> None:
    truth = torch.tensor([[0.0, 0.0, 10.0, 10.0]])
    half = torch.tensor([[0.0, 0.0, 5.0, 10.0]])  # IoU 0.5 exactly
    assert match_boxes(half, truth, iou_threshold=0.5).pairs == [(0, 0)]
    assert match_boxes(half, truth, iou_threshold=0.51).pairs == []


def test_precision_recall_over_frames() -> None:
    truth = [torch.tensor([[0.0, 0, 10, 10], [20.0, 0, 30, 10]]), torch.zeros(0, 4), torch.tensor([[0.0, 0, 10, 10]])]
    pred = [torch.tensor([[0.0, 0, 10, 10]]), torch.tensor([[5.0, 5, 9, 9]]), torch.tensor([[1.0, 1, 10, 10]])]
    r = precision_recall(pred, truth)
    assert (r.true_positives, r.false_positives, r.false_negatives) == (2, 1, 1)
    assert r.precision == pytest.approx(2 / 3) and r.recall == pytest.approx(2 / 3)
    assert r.mean_iou == pytest.approx((1.0 + 0.81) / 2)
    with pytest.raises(ValueError, match="2 predicted frames but 3"):
        precision_recall(pred[:2], truth)


def test_no_faces_anywhere_is_perfect() -> None:
    r = precision_recall([torch.zeros(0, 4)], [torch.zeros(0, 4)])
    assert (r.precision, r.recall) == (1.0, 1.0)


def test_agreement() -> None:
    a = [torch.tensor([[0.0, 0, 10, 10], [50.0, 50, 60, 60]]), torch.zeros(0, 4)]
    b = [torch.tensor([[0.0, 0, 10, 10.2]]), torch.tensor([[1.0, 1, 5, 5]])]
    ag = agreement(a, b)
    assert (ag.matched, ag.only_a, ag.only_b) == (1, 1, 1)
    assert ag.min_iou == pytest.approx(10 / 10.2)
    assert ag.fraction == pytest.approx(1 / 3)


def test_nms_and_iou_match_torchvision_on_random_boxes() -> None:
    import torchvision.ops

    from streamflow.detection import batched_nms

    generator = torch.Generator().manual_seed(0)
    for count in (0, 1, 50, 3000):
        corner = torch.rand(count, 2, generator=generator) * 500
        size = torch.rand(count, 2, generator=generator) * 80 + 1
        boxes = torch.cat([corner, corner + size], dim=1)
        scores = torch.rand(count, generator=generator)
        groups = torch.randint(0, 8, (count,), generator=generator)
        ours = batched_nms(boxes, scores, groups, 0.4)
        assert torch.equal(ours, torchvision.ops.batched_nms(boxes, scores, groups, 0.4))
        if count:
            assert 0 < len(ours) <= count
            assert torch.allclose(box_iou(boxes[:20], boxes[:30]), torchvision.ops.box_iou(boxes[:20], boxes[:30]))


def test_the_nms_operator_loads_without_importing_the_torchvision_package() -> None:
    """`import torchvision.ops` costs seconds of every detector's start-up; the operator alone, milliseconds."""
    code = (
        "import sys, torch\n"
        "from streamflow.detection import load_nms\n"
        "keep = load_nms()(torch.tensor([[0.0, 0, 10, 10], [1, 0, 11, 10]]), torch.tensor([0.9, 0.8]), 0.3)\n"
        "assert keep.tolist() == [0], keep\n"
        "assert 'torchvision' not in sys.modules, 'the package was imported'\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
