"""Freeze onnx2torch's Resize and Slice into modules that hold their constant arguments as Python values.

onnx2torch converts ONNX `Resize` and `Slice` into modules that read their parameters (scales, sizes,
starts, ends, ...) from tensors on every call: `OnnxResize` calls `.tolist()` on them and `OnnxSlice`
iterates them. Those tensors usually come from `Constant` nodes or initializers, which move to the GPU with
the model, so each forward copies them back to the host and waits for the GPU: the stage's thread
blocks on every call, and CUDA graph capture fails outright ("Cannot copy between CPU and CUDA
tensors during CUDA graph capture"). `freeze_constant_arguments` runs on the converted module while
it is still on the CPU and swaps every such node whose parameters are all constants for a small
module that keeps plain ints/floats/slices and takes only the data tensor: the same computation,
with no host round trip. Nodes whose parameters are computed at run time are left as they are.

The frozen modules reproduce onnx2torch 1.5's behaviour (mode mapping, `align_corners`, empty
scales/sizes meaning "not given", the batch/channel checks, Slice's flip for negative steps and its
separate indexing of negative axes), not the ONNX specification where the two differ.

Example:
    >>> import onnx
    >>> from onnx2torch import convert
    >>> module = convert(onnx.load("models/vsr_x2.onnx"))
    >>> freeze_constant_arguments(module)
    2
"""

from __future__ import annotations

import inspect
from collections import Counter
from collections.abc import Sequence
from typing import Any

import torch
from onnx2torch.node_converters.constant import OnnxConstant
from onnx2torch.node_converters.resize import OnnxResize, OnnxResizeV10
from onnx2torch.node_converters.slice import OnnxSlice
from torch import fx, nn

__all__ = ["StaticResize", "StaticSlice", "freeze_constant_arguments"]

# (ONNX mode, number of spatial dims) -> torch.nn.functional.interpolate mode, as onnx2torch maps them.
_INTERPOLATE_MODES = {
    ("nearest", 1): "nearest",
    ("nearest", 2): "nearest",
    ("nearest", 3): "nearest",
    ("linear", 1): "linear",
    ("linear", 2): "bilinear",
    ("linear", 3): "trilinear",
    ("cubic", 2): "bicubic",
}

# Index = a tuple of slices (and Ellipsis), as used with `tensor[index]`.
Index = tuple[Any, ...]


class StaticResize(nn.Module):
    """`OnnxResize` with its sizes or scales known ahead: `forward` takes only the data tensor."""

    def __init__(
        self,
        onnx_mode: str,
        align_corners: bool | None,
        *,
        sizes: list[int] | None,
        scales: list[float] | None,
        check_batch_channel: bool,
    ) -> None:
        super().__init__()
        self.onnx_mode = onnx_mode
        self.align_corners = align_corners
        self.sizes = sizes  # all of ONNX's dims [n, c, ...]; interpolate gets the spatial ones
        self.scales = scales  # spatial dims only (batch and channel were checked to be 1 when frozen)
        self.check_batch_channel = check_batch_channel

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # The mode and the batch/channel sizes depend on the input's shape, so they are checked per
        # call, as onnx2torch does (Python on shapes: no GPU sync).
        mode = _INTERPOLATE_MODES.get((self.onnx_mode, x.dim() - 2))
        if mode is None:
            raise NotImplementedError(f'{x.dim() - 2}D input is not implemented for "{self.onnx_mode}" mode.')
        size = None
        if self.sizes is not None:
            if self.check_batch_channel and list(x.shape[:2]) != self.sizes[:2]:
                raise NotImplementedError("Pytorch's interpolate cannot resize channel or batch dimensions.")
            size = self.sizes[2:]
        return nn.functional.interpolate(
            x, size=size, scale_factor=self.scales, mode=mode, align_corners=self.align_corners
        )

    def extra_repr(self) -> str:
        return f"mode={self.onnx_mode!r}, sizes={self.sizes}, scales={self.scales}, align_corners={self.align_corners}"


class StaticSlice(nn.Module):
    """`OnnxSlice` with its starts/ends/axes/steps known ahead: a flip, then up to two plain indexings."""

    def __init__(self, flip_dims: list[int], positive: Index, negative: Index) -> None:
        super().__init__()
        self.flip_dims = flip_dims
        self.positive = positive  # slices for axes 0..max(axes)
        self.negative = negative  # (..., slices for axes min(axes)..-1), or () when no axis is negative

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.flip_dims:
            x = torch.flip(x, dims=self.flip_dims)
        if self.positive:
            x = x[self.positive]
        if self.negative:
            x = x[self.negative]
        return x

    def extra_repr(self) -> str:
        return f"flip_dims={self.flip_dims}, positive={self.positive}, negative={self.negative}"


def freeze_constant_arguments(module: fx.GraphModule) -> int:
    """Replace Resize/Slice nodes whose parameters are all constants with static modules; returns how many.

    Run it before the module moves to a GPU: the constants are read once, here, on the CPU.
    """
    graph = module.graph
    # onnx2torch gives every node its own module; one shared by several nodes is left alone, as
    # swapping it would change the others too.
    uses = Counter(node.target for node in graph.nodes if node.op == "call_module")
    frozen = 0
    for node in list(graph.nodes):
        if node.op != "call_module" or uses[node.target] != 1 or not node.args:
            continue
        static = _static_replacement(module, node)
        if static is None:
            continue
        module.add_submodule(str(node.target), static)
        node.args, node.kwargs = (node.args[0],), {}
        frozen += 1
    if frozen:
        # The Constant nodes that only fed these parameters are now dead; drop them and their modules.
        graph.eliminate_dead_code()
        module.delete_all_unused_submodules()
        module.recompile()
    return frozen


def _static_replacement(module: fx.GraphModule, node: fx.Node) -> nn.Module | None:
    """The static module for `node`, or None when it must stay as it is."""
    target = module.get_submodule(str(node.target))
    if isinstance(target, OnnxResizeV10):
        params = _constant_params(module, target, node, ("scales",))
        # OnnxResizeV10 only wraps an OnnxResize (nearest, no roi/sizes) that holds its settings.
        return None if params is None else _static_resize(target._resize, params)
    if isinstance(target, OnnxResize):
        params = _constant_params(module, target, node, ("roi", "scales", "sizes"))
        return None if params is None else _static_resize(target, params)
    if isinstance(target, OnnxSlice):
        params = _constant_params(module, target, node, ("starts", "ends", "axes", "steps"))
        return None if params is None else _static_slice(params)
    return None


def _constant_params(
    module: fx.GraphModule, target: nn.Module, node: fx.Node, names: Sequence[str]
) -> dict[str, torch.Tensor] | None:
    """The parameters `names` of `node` as CPU tensors (absent ones left out), or None if one is not a constant.

    A parameter read from a buffer stays frozen at the value it has now; onnx2torch never changes
    initializer buffers after conversion.
    """
    # onnx2torch passes parameters positionally up to the first omitted ONNX input, then by keyword.
    try:
        bound = inspect.signature(target.forward).bind(*node.args, **node.kwargs).arguments
    except TypeError:
        return None
    params: dict[str, torch.Tensor] = {}
    for name in names:
        arg = bound.get(name)
        if arg is None:
            continue
        value = _constant_value(module, arg)
        if value is None:
            return None
        params[name] = value
    return params


def _constant_value(module: fx.GraphModule, arg: object) -> torch.Tensor | None:
    """The CPU value of `arg` if it is a graph constant: a `Constant` node or an initializer (a buffer)."""
    if not isinstance(arg, fx.Node):
        return None
    if arg.op == "call_module":
        constant = module.get_submodule(str(arg.target))
        if isinstance(constant, OnnxConstant) and isinstance(constant.value, torch.Tensor):
            return constant.value.detach().cpu()
    elif arg.op == "get_attr":  # onnx2torch keeps ONNX initializers as buffers read by get_attr
        owner_name, _, attr = str(arg.target).rpartition(".")
        value = getattr(module.get_submodule(owner_name) if owner_name else module, attr, None)
        if isinstance(value, torch.Tensor) and not isinstance(value, nn.Parameter):
            return value.detach().cpu()
    return None


def _static_resize(resize: OnnxResize, params: dict[str, torch.Tensor]) -> StaticResize | None:
    # A non-empty roi that onnx2torch does not ignore, or scales on the batch/channel dims, make
    # every call raise: keep the original node so it keeps raising its own error.
    roi = params.get("roi")
    if not resize.ignore_roi and roi is not None and roi.numel() != 0:
        return None
    # Empty tensors mean "not given" (ONNX passes an empty input when the other one is used).
    sizes_t, scales_t = params.get("sizes"), params.get("scales")
    sizes: list[int] | None = sizes_t.tolist() if sizes_t is not None and sizes_t.numel() != 0 else None
    scales: list[float] | None = scales_t.tolist() if scales_t is not None and scales_t.numel() != 0 else None
    if scales is not None:
        if scales[:2] != [1, 1]:
            return None
        scales = scales[2:]
    return StaticResize(
        resize.onnx_mode,
        resize.align_corners,
        sizes=sizes,
        scales=scales,
        check_batch_channel=not resize.ignore_bs_ch_size,
    )


def _static_slice(params: dict[str, torch.Tensor]) -> StaticSlice | None:
    if any(p.dim() != 1 for p in params.values()):
        return None  # malformed for ONNX; onnx2torch fails at run time, so leave it to do that
    starts: list[int] = params["starts"].tolist()
    ends: list[int] = params["ends"].tolist()
    axes: list[int] = params["axes"].tolist() if "axes" in params else list(range(len(starts)))
    steps: list[int] = params["steps"].tolist() if "steps" in params else [1] * len(starts)
    if not axes:
        return None  # likewise (onnx2torch's max() of no axes raises on every call)
    by_axis: dict[int, slice] = {}
    flip_dims: list[int] = []
    for start, end, axis, step in zip(starts, ends, axes, steps, strict=False):
        if step < 0:
            # A reversed slice becomes a forward one on the flipped tensor: index i maps to -i - 1.
            flip_dims.append(axis)
            start, end, step = -start - 1, -end - 1, -step
        by_axis[axis] = slice(start, end, step)
    # Positive axes index from the front; negative ones, in a second indexing, from the back (after
    # an Ellipsis), so the input's rank need not be known. An axis named both ways is sliced twice.
    everything = slice(None, None)
    positive = tuple(by_axis.get(a, everything) for a in range(max(axes) + 1))
    negative = tuple(by_axis.get(a, everything) for a in range(min(axes), 0))
    return StaticSlice(flip_dims, positive, (Ellipsis, *negative) if negative else ())
