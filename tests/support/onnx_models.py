"""ONNX models for tests: a small detector-like network exported by torch, and where the CenterFace model lives."""

from __future__ import annotations

import warnings
from pathlib import Path

import torch

CENTERFACE = Path(__file__).resolve().parents[2] / "models" / "centerface.onnx"


class SmallNet(torch.nn.Module):
    """A few conv layers with two outputs, like a detector head (heatmap + regression)."""

    def __init__(self) -> None:
        super().__init__()
        self.body = torch.nn.Sequential(
            torch.nn.Conv2d(3, 8, 3, padding=1),
            torch.nn.ReLU(),
            torch.nn.Conv2d(8, 16, 3, stride=2, padding=1),
            torch.nn.BatchNorm2d(16),
            torch.nn.ReLU(),
        )
        self.heat = torch.nn.Conv2d(16, 1, 1)
        self.box = torch.nn.Conv2d(16, 4, 3, padding=1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        feat = self.body(x)
        return torch.sigmoid(self.heat(feat)), self.box(feat)


def export_small_model(path: Path, *, batch: int = 2, height: int = 32, width: int = 48) -> Path:
    """Export `SmallNet` (fixed seed, non-trivial BatchNorm statistics) with a static input."""
    torch.manual_seed(0)
    net = SmallNet().eval()
    with torch.no_grad():
        bn = net.body[3]
        assert isinstance(bn, torch.nn.BatchNorm2d) and bn.running_mean is not None and bn.running_var is not None
        bn.running_mean.uniform_(-0.5, 0.5)
        bn.running_var.uniform_(0.5, 2.0)
    # dynamo=False: the TorchScript exporter works offline and needs no onnxscript; it warns that it
    # is the legacy path, which is not what these tests are about.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            net,
            (torch.rand(batch, 3, height, width),),
            str(path),
            input_names=["images"],
            output_names=["heat", "box"],
            dynamo=False,
        )
    return path
