"""A small multi-frame video super-resolution network (x2), trained by `training/train_sr.py`.

The network sees a fixed window of consecutive RGB frames stacked on the channel axis (early
fusion, like BMF's TensorRT demo), extracts features at low resolution with a few residual conv
blocks, and upsamples with a pixel shuffle. The output is a *residual* added to the bicubic
upscale of the centre frame, and the last conv starts at zero: an untrained model already equals
bicubic, so training only has to learn what bicubic misses (detail, sharpening, using the
neighbours' sub-pixel offsets).

Layout: input `(N, 3 * window, H, W)` float RGB in [0, 1], frames oldest first, the centre frame
at index `(window - 1) // 2`; output `(N, 3, 2H, 2W)` float, not clamped (the postprocess clamps).

Example:
    >>> import torch
    >>> model = VSRNet(window=5).eval()
    >>> model(torch.rand(1, 15, 24, 32)).shape
    torch.Size([1, 3, 48, 64])
    >>> torch.allclose(model(torch.rand(1, 15, 8, 8)).mean(), torch.tensor(0.5), atol=0.1)
    True
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "StackedWindows",
    "VSRNet",
    "export_onnx",
    "export_stacked_onnx",
    "from_onnx_weights",
    "load_checkpoint",
    "stack_window",
]


class _ResBlock(nn.Module):
    """conv-ReLU-conv with an identity skip; no normalisation (it hurts SR and costs at inference)."""

    def __init__(self, features: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(features, features, 3, padding=1)
        self.conv2 = nn.Conv2d(features, features, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(F.relu(self.conv1(x), inplace=True))


class VSRNet(nn.Module):
    """Early-fusion multi-frame x2 super-resolution network.

    Args:
        window: frames stacked on the channel axis (the ONNX export fixes it).
        features: channels of the low-resolution feature maps.
        blocks: residual blocks.
        scale: upscaling factor (2; pixel shuffle supports any integer).

    Example:
        >>> net = VSRNet(window=3, features=16, blocks=2)
        >>> net(torch.zeros(2, 9, 10, 12)).shape
        torch.Size([2, 3, 20, 24])
    """

    def __init__(self, window: int = 5, features: int = 32, blocks: int = 6, scale: int = 2) -> None:
        super().__init__()
        if window < 1:
            raise ValueError(f"window must be >= 1, got {window}")
        if scale < 1:
            raise ValueError(f"scale must be >= 1, got {scale}")
        self.window = window
        self.features = features
        self.blocks = blocks
        self.scale = scale
        self.head = nn.Conv2d(3 * window, features, 3, padding=1)
        self.body = nn.Sequential(*[_ResBlock(features) for _ in range(blocks)])
        self.body_out = nn.Conv2d(features, features, 3, padding=1)
        self.tail = nn.Conv2d(features, 3 * scale * scale, 3, padding=1)
        self.shuffle = nn.PixelShuffle(scale)
        # Zero residual at start: the untrained network is exactly bicubic, so early training
        # steps never make the picture worse than the baseline we compare against.
        nn.init.zeros_(self.tail.weight)
        if self.tail.bias is not None:
            nn.init.zeros_(self.tail.bias)

    def config(self) -> dict[str, int]:
        """Constructor arguments, stored in checkpoints so `load_checkpoint` rebuilds the same net."""
        return {"window": self.window, "features": self.features, "blocks": self.blocks, "scale": self.scale}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        centre = (self.window - 1) // 2  # the same rule as `stack_window` and the `window` stage
        base = F.interpolate(
            x[:, 3 * centre : 3 * centre + 3], scale_factor=float(self.scale), mode="bicubic", align_corners=False
        )
        feat = F.relu(self.head(x), inplace=True)
        feat = feat + self.body_out(self.body(feat))
        return base + self.shuffle(self.tail(feat))


def stack_window(frames: list[torch.Tensor], index: int, window: int) -> torch.Tensor:
    """Model input `(3 * window, H, W)` for frame `index` of `frames` (each `(3, H, W)`).

    Neighbours outside the clip repeat the first/last frame, the same rule the `window` stage
    uses, so evaluation and the pipeline see identical inputs.

    Example:
        >>> fs = [torch.full((3, 1, 1), float(i)) for i in range(3)]
        >>> stack_window(fs, 0, 5)[::3].flatten().tolist()
        [0.0, 0.0, 0.0, 1.0, 2.0]
    """
    before = (window - 1) // 2
    last = len(frames) - 1
    picks = [min(max(index + offset - before, 0), last) for offset in range(window)]
    return torch.cat([frames[i] for i in picks], dim=0)


def load_checkpoint(path: str | Path, *, map_location: str | torch.device = "cpu") -> VSRNet:
    """Rebuild a `VSRNet` saved by `training/train_sr.py` (`{"config": ..., "state_dict": ...}`)."""
    ckpt: dict[str, Any] = torch.load(path, map_location=map_location, weights_only=True)
    model = VSRNet(**ckpt["config"])
    model.load_state_dict(ckpt["state_dict"])
    return model.eval()


def export_onnx(model: VSRNet, path: str | Path, *, opset: int = 17) -> Path:
    """Export with a fixed window and dynamic batch, height and width.

    Input name `frames` `(N, 3 * window, H, W)`, output name `hr` `(N, 3, scale * H, scale * W)`.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model = model.eval().cpu()
    dummy = torch.rand(1, 3 * model.window, 32, 48)
    # The TorchScript exporter: the dynamo one needs onnxscript, which the GPU host lacks.
    torch.onnx.export(
        model,
        (dummy,),
        str(path),
        input_names=["frames"],
        output_names=["hr"],
        dynamic_axes={"frames": {0: "batch", 2: "height", 3: "width"}, "hr": {0: "batch", 2: "height2", 3: "width2"}},
        opset_version=opset,
        do_constant_folding=True,
        dynamo=False,
    )
    return path


class StackedWindows(nn.Module):
    """N frames in, M frames out, NHWC, over a `VSRNet` of window N - M + 1: BMF's SR engine layout.

    Input `(B, H, W, 3 * N)`: N consecutive RGB frames in [0, 1] concatenated on the channel axis,
    oldest first. Output `(B, scale * H, scale * W, 3 * M)`: M upscaled frames on the channel axis;
    output frame k is the network's picture of input frame k + (N - M) // 2, from the network's
    window of input frames k .. k + window - 1 centred on it. So 7 in / 3 out over the 5-frame
    network upscales input frames 2, 3, 4, each from the same 5 frames the 5-frame model alone
    would see: the quality is the network's.

    Example:
        >>> wrapped = StackedWindows(VSRNet(window=5, features=8, blocks=1), frames_in=7, frames_out=3)
        >>> wrapped(torch.rand(2, 6, 8, 21)).shape
        torch.Size([2, 12, 16, 9])
    """

    def __init__(self, net: VSRNet, *, frames_in: int, frames_out: int) -> None:
        super().__init__()
        if frames_out < 1 or frames_in - frames_out + 1 != net.window or (frames_in - frames_out) % 2:
            raise ValueError(
                f"{frames_in} frames in, {frames_out} out need a network window of {frames_in - frames_out + 1} "
                f"(and an even difference, so each output frame is centred); the network's window is {net.window}"
            )
        self.net = net
        self.frames_in = frames_in
        self.frames_out = frames_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        window = self.net.window
        channels_first = x.permute(0, 3, 1, 2)
        # One network call per output frame, not the M windows folded into the batch: the exported
        # graph then has only constant slices and no shape arithmetic (no Shape/Reshape), which
        # TensorRT builds as is and the torch backend can replay from a CUDA graph.
        frames = [self.net(channels_first[:, 3 * k : 3 * (k + window)]) for k in range(self.frames_out)]
        return torch.cat(frames, dim=1).permute(0, 2, 3, 1)  # (B, sH, sW, 3 * M)


def from_onnx_weights(path: str | Path) -> VSRNet:
    """Rebuild the `VSRNet` of an exported `export_onnx` file from its weights (window, width, depth read off them).

    Example:
        >>> net = from_onnx_weights(Path(__file__).resolve().parents[2] / "models" / "vsr_x2.onnx")
        >>> net.config()
        {'window': 5, 'features': 48, 'blocks': 8, 'scale': 2}
    """
    import onnx
    from onnx import numpy_helper

    weights = {
        t.name: torch.from_numpy(numpy_helper.to_array(t).copy()) for t in onnx.load(str(path)).graph.initializer
    }
    features, channels = weights["head.weight"].shape[:2]
    blocks = sum(1 for name in weights if name.startswith("body.") and name.endswith(".conv1.weight"))
    scale = math.isqrt(weights["tail.weight"].shape[0] // 3)
    net = VSRNet(window=int(channels) // 3, features=int(features), blocks=blocks, scale=scale)
    net.load_state_dict(weights)
    return net.eval()


def export_stacked_onnx(
    model: StackedWindows,
    path: str | Path,
    *,
    input_name: str = "input:0",
    output_name: str = "output:0",
    opset: int = 17,
) -> Path:
    """Export a `StackedWindows` model: input `(B, H, W, 3N)` float32, output `(B, sH, sW, 3M)`; dynamic B, H, W."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model = model.eval().cpu()
    dummy = torch.rand(1, 32, 48, 3 * model.frames_in)
    torch.onnx.export(
        model,
        (dummy,),
        str(path),
        input_names=[input_name],
        output_names=[output_name],
        dynamic_axes={
            input_name: {0: "batch", 1: "height", 2: "width"},
            output_name: {0: "batch", 1: "height2", 2: "width2"},
        },
        opset_version=opset,
        do_constant_folding=True,
        dynamo=False,
    )
    import onnx

    # The exporter leaves the output's channel count symbolic; it is fixed (3 * M), and consumers
    # (the window/sr_output settings, TensorRT profiles) read it from the file.
    exported = onnx.load(str(path))
    exported.graph.output[0].type.tensor_type.shape.dim[3].dim_value = 3 * model.frames_out
    onnx.checker.check_model(exported)
    onnx.save(exported, str(path))
    return path
