"""Drawing boxes and landmarks, blurring and pixelating, in RGB and NV12 frames, in place."""

from __future__ import annotations

import pytest
import torch

from streamflow.ops.color import nv12_to_rgb, rgb_to_nv12
from streamflow.ops.draw import blur_boxes, box_mask, draw_boxes, draw_points, pixelate_boxes

BOXES = torch.tensor([[10.0, 8.0, 30.0, 20.0], [25.0, 15.0, 50.0, 40.0], [-5.0, 30.0, 6.0, 70.0]])


def reference_mask(boxes: torch.Tensor, h: int, w: int, thickness: int | None) -> torch.Tensor:
    """The same masks drawn the obvious way: a Python loop over boxes and slices."""
    mask = torch.zeros(h, w, dtype=torch.bool)
    for x1, y1, x2, y2 in boxes.round().int().tolist():
        x1, y1, x2, y2 = max(x1, 0), max(y1, 0), min(x2, w), min(y2, h)
        if thickness is None:
            mask[y1:y2, x1:x2] = True
            continue
        t = thickness
        mask[y1 : min(y1 + t, y2), x1:x2] = True
        mask[max(y2 - t, y1) : y2, x1:x2] = True
        mask[y1:y2, x1 : min(x1 + t, x2)] = True
        mask[y1:y2, max(x2 - t, x1) : x2] = True
    return mask


@pytest.mark.parametrize("thickness", [None, 1, 3])
def test_box_mask_matches_reference(thickness: int | None) -> None:
    assert torch.equal(box_mask(BOXES, 48, 64, thickness=thickness), reference_mask(BOXES, 48, 64, thickness))


def test_draw_boxes_rgb_in_place() -> None:
    image = torch.randint(0, 200, (3, 48, 64), dtype=torch.uint8)
    before = image.clone()
    ptr = image.data_ptr()
    draw_boxes(image, BOXES, color=(255, 0, 128), thickness=2)
    assert image.data_ptr() == ptr
    mask = reference_mask(BOXES, 48, 64, 2)
    assert image[:, mask].T.unique(dim=0).tolist() == [[255, 0, 128]]
    assert torch.equal(image[:, ~mask], before[:, ~mask])


def test_draw_boxes_nv12() -> None:
    rgb = torch.full((3, 48, 64), 60, dtype=torch.uint8)
    nv12 = rgb_to_nv12(rgb)
    draw_boxes(nv12, BOXES[:1], color=(0, 255, 0), thickness=2)
    back = nv12_to_rgb(nv12)
    # On the outline the colour is green (chroma is shared by 2x2 blocks, so test the block-aligned corner).
    assert back[:, 8, 10].tolist() == pytest.approx([0, 255, 0], abs=3)
    # Inside the box and far away nothing changed.
    assert back[:, 14, 20].tolist() == pytest.approx([60, 60, 60], abs=2)
    assert back[:, 40, 60].tolist() == pytest.approx([60, 60, 60], abs=2)


def test_draw_points() -> None:
    image = torch.zeros(3, 20, 20, dtype=torch.uint8)
    draw_points(image, torch.tensor([[[5.0, 5.0], [15.0, 12.0]]]), color=(9, 9, 9), radius=1)
    assert int(image[0].bool().sum()) == 18  # two 3x3 squares
    assert int(image[0, 12, 15]) == 9 and int(image[0, 5, 5]) == 9 and int(image[0, 8, 8]) == 0


def test_pixelate_rgb() -> None:
    image = torch.randint(0, 256, (3, 32, 48), dtype=torch.uint8)
    before = image.clone()
    pixelate_boxes(image, torch.tensor([[8.0, 8.0, 24.0, 24.0]]), block=8)
    tile = before[:, 8:16, 8:16].float().mean(dim=(1, 2)).round()
    assert torch.equal(image[:, 8:16, 8:16].float(), tile[:, None, None].expand(3, 8, 8))
    outside = ~reference_mask(torch.tensor([[8.0, 8.0, 24.0, 24.0]]), 32, 48, None)
    assert torch.equal(image[:, outside], before[:, outside])


@pytest.mark.parametrize("layout", ["rgb", "nv12"])
def test_blur_removes_detail_inside_only(layout: str) -> None:
    torch.manual_seed(0)
    rgb = torch.randint(0, 256, (3, 64, 96), dtype=torch.uint8)
    image = rgb.clone() if layout == "rgb" else rgb_to_nv12(rgb)
    before = image.clone()
    box = torch.tensor([[16.0, 16.0, 64.0, 48.0]])
    blur_boxes(image, box, strength=8)
    after_rgb = image if layout == "rgb" else nv12_to_rgb(image)
    before_rgb = before if layout == "rgb" else nv12_to_rgb(before)
    inside = after_rgb[:, 20:44, 20:60].float()
    assert inside.std() < 0.3 * before_rgb[:, 20:44, 20:60].float().std()
    if layout == "rgb":
        outside = ~reference_mask(box, 64, 96, None)
        assert torch.equal(image[:, outside], before[:, outside])
    else:
        assert torch.equal(image[:16], before[:16])  # Y rows above the box


def test_empty_boxes_are_a_no_op() -> None:
    image = torch.randint(0, 256, (3, 8, 8), dtype=torch.uint8)
    before = image.clone()
    empty = torch.zeros(0, 4)
    draw_boxes(image, empty)
    blur_boxes(image, empty)
    pixelate_boxes(image, empty)
    draw_points(image, torch.zeros(0, 5, 2))
    assert torch.equal(image, before)


def test_rejects_non_uint8_and_bad_shapes() -> None:
    with pytest.raises(ValueError, match="uint8"):
        draw_boxes(torch.zeros(3, 8, 8), BOXES)
    with pytest.raises(ValueError, match="NV12"):
        draw_boxes(torch.zeros(7, 8, dtype=torch.uint8), BOXES, layout="nv12")


@pytest.mark.gpu
@pytest.mark.parametrize("layout", ["rgb", "nv12"])
def test_cuda_matches_cpu(layout: str) -> None:
    rgb = torch.randint(0, 256, (3, 72, 128), dtype=torch.uint8)
    cpu = rgb if layout == "rgb" else rgb_to_nv12(rgb)
    gpu = cpu.cuda()
    for fn in (draw_boxes, pixelate_boxes, blur_boxes):
        fn(cpu, BOXES)
        fn(gpu, BOXES.cuda())
    assert gpu.is_cuda
    assert int((gpu.cpu().int() - cpu.int()).abs().max()) <= 1
