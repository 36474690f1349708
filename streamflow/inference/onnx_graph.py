"""An ONNX graph as a torch module, for the operators of convolutional networks, without onnx2torch.

Why this exists: importing onnx2torch imports all its converters, and those for NMS and RoIAlign import
torchvision, which imports `torch._dynamo`. That one import is most of a model stage's set-up time on a
GPU host (the measured figures: docs/MEASURED.md), spent on code that a detector or an upscaler never
runs. The operators here cover the models this project ships and the usual exports of CNN detectors,
classifiers and upscalers; `unsupported_operators` says what a graph needs beyond them, and the torch
backend then converts with onnx2torch instead (and says so).

Values that flow through the module:
- tensors, on the module's device and in its precision (float initializers are buffers, so `.to()`
  moves and casts them with the module);
- host values (numpy): integer constants and everything computed from shapes (Shape, then Gather,
  Unsqueeze, Concat...). The inputs that ONNX defines as shapes, indices or sizes (Reshape's shape,
  Slice's starts and ends, Resize's scales...) are read from host values only, so the module never reads
  a value back from the GPU: no host sync, and the forward pass can be captured in a CUDA graph.
  Small float constants are kept both ways, so a shape scaled by one (floor(H * 2.0) as a Resize size)
  stays a host value.
- A graph that builds but needs a device value as a shape (computed from a tensor's contents) fails
  on its first run with a `GraphError` that says so; `converter: onnx2torch` runs such graphs.

Example (CPU):
    >>> import onnx, torch
    >>> from onnx import helper, TensorProto
    >>> graph = helper.make_graph(
    ...     [helper.make_node("Relu", ["x"], ["y"])], "g",
    ...     [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2])],
    ...     [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2])])
    >>> module = OnnxGraphModule(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))
    >>> module(torch.tensor([[-1.0, 2.0]]))
    tensor([[0., 2.]])
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from onnx import numpy_helper

__all__ = ["GraphError", "OnnxGraphModule", "unsupported_operators"]

Value = torch.Tensor | np.ndarray


class GraphError(ValueError):
    """The graph uses an operator or an attribute value this converter does not implement."""


class _Op(torch.nn.Module):
    """One node. `host_inputs`: positions of the inputs ONNX defines as shapes, indices or sizes."""

    host_inputs: frozenset[int] = frozenset()

    def forward(self, *inputs: Any) -> Any:  # pragma: no cover - every op overrides it
        raise NotImplementedError


def _attrs(node: onnx.NodeProto) -> dict[str, Any]:
    values = {}
    for attribute in node.attribute:
        value = onnx.helper.get_attribute_value(attribute)
        values[attribute.name] = value.decode() if isinstance(value, bytes) else value
    return values


def _as_tensor(value: Value, like: torch.Tensor) -> torch.Tensor:
    """A host value next to a tensor operand (a computed scalar, say): moved once per call."""
    if isinstance(value, torch.Tensor):
        return value
    tensor = torch.from_numpy(np.ascontiguousarray(value))
    if tensor.is_floating_point() and like.is_floating_point():
        tensor = tensor.to(like.dtype)
    return tensor.to(like.device)


def _ints(value: Value | None) -> list[int]:
    if value is None:
        return []
    if isinstance(value, torch.Tensor):
        raise GraphError("a shape, index or size computed on the device (it would need a host sync)")
    return [int(v) for v in np.asarray(value).reshape(-1)]


def _floats(value: Value | None) -> list[float]:
    if value is None:
        return []
    if isinstance(value, torch.Tensor):
        raise GraphError("a scale computed on the device (it would need a host sync)")
    return [float(v) for v in np.asarray(value).reshape(-1)]


# ---------------------------------------------------------------------------------------------------------
# Element-wise operators: host values stay numpy (shape arithmetic), anything touching a tensor is torch.


class _Binary(_Op):
    def __init__(self, on_host: Callable[[Any, Any], Any], on_device: Callable[[Any, Any], Any]) -> None:
        super().__init__()
        self.on_host, self.on_device = on_host, on_device

    def forward(self, a: Value, b: Value) -> Value:
        if isinstance(a, np.ndarray) and isinstance(b, np.ndarray):
            return np.asarray(self.on_host(a, b))
        tensor = a if isinstance(a, torch.Tensor) else b
        assert isinstance(tensor, torch.Tensor)
        return self.on_device(_as_tensor(a, tensor), _as_tensor(b, tensor))


def _host_div(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    if np.issubdtype(np.result_type(a, b), np.integer):
        return np.trunc(np.true_divide(a, b)).astype(np.result_type(a, b))  # ONNX: integer division truncates
    return np.true_divide(a, b)


def _device_div(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    if a.is_floating_point() or b.is_floating_point():
        return a / b
    return torch.div(a, b, rounding_mode="trunc")


_BINARY: dict[str, tuple[Callable[[Any, Any], Any], Callable[[Any, Any], Any]]] = {
    "Add": (np.add, torch.add),
    "Sub": (np.subtract, torch.sub),
    "Mul": (np.multiply, torch.mul),
    "Div": (_host_div, _device_div),
    "Pow": (np.power, torch.pow),
    "Equal": (np.equal, torch.eq),
    "Greater": (np.greater, torch.gt),
    "Less": (np.less, torch.lt),
}


class _Unary(_Op):
    def __init__(self, on_device: Callable[[torch.Tensor], torch.Tensor], on_host: Callable[[Any], Any] | None) -> None:
        super().__init__()
        self.on_device, self.on_host = on_device, on_host

    def forward(self, x: Value) -> Value:
        if isinstance(x, np.ndarray):
            if self.on_host is None:
                raise GraphError("an activation applied to a host value")
            return np.asarray(self.on_host(x), dtype=x.dtype)
        return self.on_device(x)


# Parameterless activations and identities: the device function, and the host one where shape arithmetic uses it.
_UNARY_FUNCTIONS: dict[str, tuple[Callable[[torch.Tensor], torch.Tensor], Callable[[Any], Any] | None]] = {
    "Relu": (torch.relu, None),
    "Sigmoid": (torch.sigmoid, None),
    "Tanh": (torch.tanh, None),
    "Exp": (torch.exp, np.exp),
    "Sqrt": (torch.sqrt, np.sqrt),
    "Neg": (torch.neg, np.negative),
    "Abs": (torch.abs, np.abs),
    "Floor": (torch.floor, np.floor),
    "Ceil": (torch.ceil, np.ceil),
    "Identity": (lambda x: x, lambda x: x),
    "Dropout": (lambda x: x, lambda x: x),  # inference: identity
    "HardSwish": (F.hardswish, None),
    "Softplus": (F.softplus, None),
}


def _unary(node: onnx.NodeProto, attrs: dict[str, Any]) -> _Op:
    op = node.op_type
    if op == "LeakyRelu":
        alpha = float(attrs.get("alpha", 0.01))
        return _Unary(lambda x: F.leaky_relu(x, alpha), None)
    if op == "Elu":
        alpha = float(attrs.get("alpha", 1.0))
        return _Unary(lambda x: F.elu(x, alpha), None)
    if op == "HardSigmoid":
        alpha, beta = float(attrs.get("alpha", 0.2)), float(attrs.get("beta", 0.5))
        return _Unary(lambda x: torch.clamp(alpha * x + beta, 0.0, 1.0), None)
    return _Unary(*_UNARY_FUNCTIONS[op])


class _Clip(_Op):
    host_inputs = frozenset({1, 2})

    def __init__(self, low: float | None, high: float | None) -> None:
        super().__init__()
        self.low, self.high = low, high

    def forward(self, x: torch.Tensor, low: Value | None = None, high: Value | None = None) -> torch.Tensor:
        lo = _floats(low)[0] if low is not None else self.low
        hi = _floats(high)[0] if high is not None else self.high
        return torch.clamp(x, lo, hi)


class _Softmax(_Op):
    def __init__(self, axis: int, coerce_2d: bool, log: bool) -> None:
        super().__init__()
        self.axis, self.coerce_2d, self.log = axis, coerce_2d, log

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        function = torch.log_softmax if self.log else torch.softmax
        axis = self.axis % x.dim()
        if self.coerce_2d and axis != x.dim() - 1:
            # Before opset 13 the input is seen as 2-D: [prod(dims before axis), prod(dims from axis)].
            return function(x.reshape(*x.shape[:axis], -1), -1).reshape(x.shape)
        return function(x, axis)


# ---------------------------------------------------------------------------------------------------------
# Layers with weights.


def _f_pad_order(begin: Sequence[int], end: Sequence[int]) -> list[int]:
    """ONNX's per-axis begin and end widths as F.pad's list, which takes the last axis first."""
    explicit: list[int] = []
    for axis in reversed(range(len(begin))):
        explicit += [begin[axis], end[axis]]
    return explicit


def _symmetric_pads(pads: Sequence[int], spatial: int) -> tuple[list[int], list[int] | None]:
    """ONNX pads [begin..., end...] as torch's symmetric `padding`, plus an F.pad list where they differ."""
    pads = list(pads) or [0] * (2 * spatial)
    begin, end = pads[:spatial], pads[spatial:]
    if begin == end:
        return begin, None
    return [0] * spatial, _f_pad_order(begin, end)


def _check_kernel(op: str, attrs: dict[str, Any], weight: np.ndarray) -> int:
    """The group count of a 2-D (transposed) convolution this module implements; GraphError otherwise."""
    if weight.ndim != 4:
        raise GraphError(f"{op} with a {weight.ndim - 2}-D kernel (2-D only)")
    if attrs.get("auto_pad", "NOTSET") not in ("NOTSET", "VALID") or "output_shape" in attrs:
        raise GraphError(f"{op} with auto_pad {attrs.get('auto_pad')} or output_shape")
    return int(attrs.get("group", 1))


def _load_weights(
    layer: torch.nn.Conv2d | torch.nn.ConvTranspose2d, weight: np.ndarray, bias: np.ndarray | None
) -> None:
    with torch.no_grad():
        layer.weight.copy_(torch.from_numpy(weight))
        if bias is not None:
            layer.bias.copy_(torch.from_numpy(bias))  # type: ignore[union-attr]
    layer.requires_grad_(False)


class _Conv(_Op):
    def __init__(self, attrs: dict[str, Any], weight: np.ndarray, bias: np.ndarray | None) -> None:
        super().__init__()
        groups = _check_kernel("Conv", attrs, weight)
        padding, self.explicit = _symmetric_pads(attrs.get("pads", []), 2)
        self.conv = torch.nn.Conv2d(
            weight.shape[1] * groups,
            weight.shape[0],
            tuple(weight.shape[2:]),
            stride=tuple(attrs.get("strides", [1, 1])),
            padding=(padding[0], padding[1]),
            dilation=tuple(attrs.get("dilations", [1, 1])),
            groups=groups,
            bias=bias is not None,
        )
        _load_weights(self.conv, weight, bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.explicit is not None:
            x = F.pad(x, self.explicit)
        return self.conv(x)


class _ConvTranspose(_Op):
    def __init__(self, attrs: dict[str, Any], weight: np.ndarray, bias: np.ndarray | None) -> None:
        super().__init__()
        groups = _check_kernel("ConvTranspose", attrs, weight)
        pads = list(attrs.get("pads", [])) or [0, 0, 0, 0]
        # Asymmetric pads crop the full output afterwards (transposed padding removes output rows).
        self.crop = None if pads[:2] == pads[2:] else pads
        self.conv = torch.nn.ConvTranspose2d(
            weight.shape[0],
            weight.shape[1] * groups,
            tuple(weight.shape[2:]),
            stride=tuple(attrs.get("strides", [1, 1])),
            padding=tuple(pads[:2]) if self.crop is None else 0,
            output_padding=tuple(attrs.get("output_padding", [0, 0])),
            dilation=tuple(attrs.get("dilations", [1, 1])),
            groups=groups,
            bias=bias is not None,
        )
        _load_weights(self.conv, weight, bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        if self.crop is not None:
            top, left, bottom, right = self.crop
            y = y[..., top : y.shape[-2] - bottom, left : y.shape[-1] - right]
        return y


class _BatchNorm(_Op):
    def __init__(self, epsilon: float, scale: np.ndarray, bias: np.ndarray, mean: np.ndarray, var: np.ndarray) -> None:
        super().__init__()
        self.epsilon = epsilon
        self.scale: torch.Tensor
        self.shift: torch.Tensor
        self.mean: torch.Tensor
        self.var: torch.Tensor
        for name, value in (("scale", scale), ("shift", bias), ("mean", mean), ("var", var)):
            self.register_buffer(name, torch.from_numpy(value.astype(np.float32)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.batch_norm(x, self.mean, self.var, self.scale, self.shift, False, 0.0, self.epsilon)


class _Gemm(_Op):
    def __init__(self, attrs: dict[str, Any]) -> None:
        super().__init__()
        self.alpha, self.beta = float(attrs.get("alpha", 1.0)), float(attrs.get("beta", 1.0))
        self.trans_a, self.trans_b = bool(attrs.get("transA", 0)), bool(attrs.get("transB", 0))

    def forward(self, a: torch.Tensor, b: torch.Tensor, c: Value | None = None) -> torch.Tensor:
        y = (a.t() if self.trans_a else a) @ (b.t() if self.trans_b else b)
        if self.alpha != 1.0:
            y = y * self.alpha
        if c is not None:
            y = y + self.beta * _as_tensor(c, y)
        return y


class _MatMul(_Op):
    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return torch.matmul(a, b)


class _Pool(_Op):
    def __init__(self, kind: str, attrs: dict[str, Any]) -> None:
        super().__init__()
        kernel = list(attrs["kernel_shape"])
        if len(kernel) != 2 or attrs.get("auto_pad", "NOTSET") not in ("NOTSET", "VALID"):
            raise GraphError(f"{kind} other than 2-D with explicit pads")
        padding, self.explicit = _symmetric_pads(attrs.get("pads", []), 2)
        self.kind, self.kernel = kind, kernel
        self.stride = list(attrs.get("strides", [1, 1]))
        self.padding, self.ceil_mode = padding, bool(attrs.get("ceil_mode", 0))
        self.dilation = list(attrs.get("dilations", [1, 1]))
        self.count_include_pad = bool(attrs.get("count_include_pad", 0))
        if self.explicit is not None and kind == "MaxPool":
            raise GraphError("MaxPool with asymmetric pads")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind == "MaxPool":
            return F.max_pool2d(x, self.kernel, self.stride, self.padding, self.dilation, ceil_mode=self.ceil_mode)
        if self.explicit is None:
            include = self.count_include_pad
            return F.avg_pool2d(
                x, self.kernel, self.stride, self.padding, ceil_mode=self.ceil_mode, count_include_pad=include
            )
        # Asymmetric pads: pad first; without count_include_pad divide by the real pixels under each window.
        sums = F.avg_pool2d(F.pad(x, self.explicit), self.kernel, self.stride, ceil_mode=self.ceil_mode)
        if self.count_include_pad:
            return sums
        real = F.pad(torch.ones_like(x[:1, :1]), self.explicit)
        return sums / F.avg_pool2d(real, self.kernel, self.stride, ceil_mode=self.ceil_mode)


class _GlobalPool(_Op):
    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind = kind

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dims = tuple(range(2, x.dim()))
        return x.amax(dims, keepdim=True) if self.kind == "GlobalMaxPool" else x.mean(dims, keepdim=True)


# ---------------------------------------------------------------------------------------------------------
# Shape and layout operators.


class _Shape(_Op):
    def __init__(self, start: int, end: int | None) -> None:
        super().__init__()
        self.start, self.end = start, end

    def forward(self, x: Value) -> np.ndarray:
        return np.asarray(tuple(x.shape)[self.start : self.end], dtype=np.int64)


class _Concat(_Op):
    def __init__(self, axis: int) -> None:
        super().__init__()
        self.axis = axis

    def forward(self, *values: Value) -> Value:
        if all(isinstance(v, np.ndarray) for v in values):
            return np.concatenate(values, axis=self.axis)  # type: ignore[arg-type]
        like = next(v for v in values if isinstance(v, torch.Tensor))
        return torch.cat([_as_tensor(v, like) for v in values], dim=self.axis)


class _Transpose(_Op):
    def __init__(self, perm: list[int] | None) -> None:
        super().__init__()
        self.perm = perm

    def forward(self, x: Value) -> Value:
        perm = self.perm if self.perm is not None else list(reversed(range(x.ndim)))
        return np.transpose(x, perm) if isinstance(x, np.ndarray) else x.permute(*perm)


class _Reshape(_Op):
    host_inputs = frozenset({1})

    def __init__(self, allow_zero: bool) -> None:
        super().__init__()
        self.allow_zero = allow_zero

    def forward(self, x: Value, shape: Value) -> Value:
        target = _ints(shape)
        if not self.allow_zero:  # 0 copies the input's size on that axis
            target = [x.shape[i] if d == 0 else d for i, d in enumerate(target)]
        return x.reshape(target)


class _Flatten(_Op):
    def __init__(self, axis: int) -> None:
        super().__init__()
        self.axis = axis

    def forward(self, x: Value) -> Value:
        axis = self.axis % x.ndim if x.ndim else 0
        return x.reshape(math.prod(x.shape[:axis]), -1)


class _Unsqueeze(_Op):
    host_inputs = frozenset({1})

    def __init__(self, axes: list[int] | None) -> None:
        super().__init__()
        self.axes = axes

    def forward(self, x: Value, axes: Value | None = None) -> Value:
        wanted = self.axes if self.axes is not None else _ints(axes)
        rank = x.ndim + len(wanted)
        for axis in sorted(a % rank for a in wanted):
            x = np.expand_dims(x, axis) if isinstance(x, np.ndarray) else x.unsqueeze(axis)
        return x


class _Squeeze(_Op):
    host_inputs = frozenset({1})

    def __init__(self, axes: list[int] | None) -> None:
        super().__init__()
        self.axes = axes

    def forward(self, x: Value, axes: Value | None = None) -> Value:
        wanted = self.axes if self.axes is not None else _ints(axes) if axes is not None else None
        if wanted is None:
            wanted = [i for i, d in enumerate(x.shape) if d == 1]
        for axis in sorted((a % x.ndim for a in wanted), reverse=True):
            x = np.squeeze(x, axis) if isinstance(x, np.ndarray) else x.squeeze(axis)
        return x


class _Gather(_Op):
    host_inputs = frozenset({1})

    def __init__(self, axis: int, constant_indices: np.ndarray | None) -> None:
        super().__init__()
        self.axis = axis
        # Indices into a tensor go to the device once, here, not on every call.
        self.index_shape = tuple(constant_indices.shape) if constant_indices is not None else ()
        self.index: torch.Tensor | None
        vector = None
        if constant_indices is not None and constant_indices.ndim > 0:
            vector = torch.from_numpy(constant_indices.astype(np.int64).reshape(-1))
        self.register_buffer("index", vector)

    def forward(self, data: Value, indices: Value) -> Value:
        if isinstance(data, np.ndarray):
            return np.asarray(np.take(data, np.asarray(indices), axis=self.axis))
        axis = self.axis % data.dim()
        index = np.asarray(indices)
        if index.ndim == 0:
            return data.select(axis, int(index) % data.shape[axis])
        if self.index is None:
            raise GraphError("Gather on a tensor with indices that are not constant")
        picked = torch.index_select(data, axis, torch.remainder(self.index, data.shape[axis]))
        return picked.reshape(*data.shape[:axis], *self.index_shape, *data.shape[axis + 1 :])


class _Slice(_Op):
    host_inputs = frozenset({1, 2, 3, 4})

    def __init__(self, attrs: dict[str, Any] | None) -> None:
        super().__init__()
        self.attrs = attrs  # before opset 10 starts, ends and axes are attributes

    def forward(self, x: Value, *positions: Value | None) -> Value:
        starts, ends, axes, steps = (*positions, None, None, None, None)[:4]
        if self.attrs is not None:
            begin, stop = list(self.attrs["starts"]), list(self.attrs["ends"])
            which = list(self.attrs.get("axes", range(len(begin))))
            stride = [1] * len(begin)
        else:
            begin, stop = _ints(starts), _ints(ends)
            which = _ints(axes) if axes is not None else list(range(len(begin)))
            stride = _ints(steps) if steps is not None else [1] * len(begin)
        index: list[slice] = [slice(None)] * x.ndim
        flip: list[int] = []
        for axis, first, last, step in zip(which, begin, stop, stride, strict=True):
            axis %= x.ndim
            size = x.shape[axis]
            if step > 0:
                index[axis] = slice(*slice(first, last, step).indices(size))
            else:
                # torch has no negative steps: take the range in reverse order, then flip that axis.
                start, end, negative = slice(first, last, step).indices(size)
                picked = range(start, end, negative)
                if len(picked) == 0:
                    index[axis] = slice(0, 0)
                else:
                    index[axis] = slice(picked[-1], picked[0] + 1, -negative)
                    flip.append(axis)
        y = x[tuple(index)]
        if flip:
            y = np.flip(y, tuple(flip)) if isinstance(y, np.ndarray) else torch.flip(y, flip)
        return y


class _Pad(_Op):
    host_inputs = frozenset({1, 2})

    def __init__(self, attrs: dict[str, Any]) -> None:
        super().__init__()
        self.mode = attrs.get("mode", "constant")
        if self.mode not in ("constant", "reflect", "edge"):
            raise GraphError(f"Pad mode {self.mode}")
        self.pads, self.value = attrs.get("pads"), float(attrs.get("value", 0.0))

    def forward(self, x: torch.Tensor, pads: Value | None = None, value: Value | None = None, *_: Any) -> torch.Tensor:
        widths = list(self.pads) if self.pads is not None else _ints(pads)
        rank = x.dim()
        explicit = _f_pad_order(widths[:rank], widths[rank:])
        while len(explicit) > 2 and explicit[-2:] == [0, 0]:
            explicit = explicit[:-2]  # F.pad's reflect/replicate modes pad only the trailing axes
        if self.mode == "constant":
            fill = _floats(value)[0] if value is not None else self.value
            return F.pad(x, explicit, value=fill)
        return F.pad(x, explicit, mode="reflect" if self.mode == "reflect" else "replicate")


class _Cast(_Op):
    def __init__(self, to: int) -> None:
        super().__init__()
        self.numpy_type = onnx.helper.tensor_dtype_to_np_dtype(to)

    def forward(self, x: Value) -> Value:
        if isinstance(x, np.ndarray):
            return x.astype(self.numpy_type)
        if self.numpy_type.kind == "f":
            # A cast to float keeps the module's precision (fp16 stays fp16), as the other tensors have it.
            return x if x.is_floating_point() else x.to(torch.get_default_dtype())
        target = torch.from_numpy(np.zeros(0, dtype=self.numpy_type)).dtype
        return x.to(target)


class _DepthToSpace(_Op):
    def __init__(self, block: int, mode: str) -> None:
        super().__init__()
        self.block, self.mode = block, mode

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mode == "CRD":
            return F.pixel_shuffle(x, self.block)
        n, c, h, w = x.shape
        b = self.block
        y = x.reshape(n, b, b, c // (b * b), h, w).permute(0, 3, 4, 1, 5, 2)
        return y.reshape(n, c // (b * b), h * b, w * b)


class _Resize(_Op):
    """Resize (opset 10+) and Upsample, where torch's `interpolate` computes the same thing."""

    def __init__(self, attrs: dict[str, Any], opset: int, upsample: bool) -> None:
        super().__init__()
        mode = attrs.get("mode", "nearest")
        old_default = opset < 11 or upsample  # Upsample and Resize-10 map coordinates asymmetrically
        transform = attrs.get("coordinate_transformation_mode", "asymmetric" if old_default else "half_pixel")
        self.positions = self._positions(opset, upsample)
        if int(attrs.get("exclude_outside", 0)) or attrs.get("antialias", 0) or attrs.get("axes"):
            raise GraphError("Resize with exclude_outside, antialias or axes")
        self.align_corners: bool | None = None
        if mode == "nearest":
            nearest = attrs.get("nearest_mode", "round_prefer_floor" if not upsample else "floor")
            half_pixel = transform in ("half_pixel", "pytorch_half_pixel", "tf_half_pixel_for_nn")
            if transform == "asymmetric" and (nearest == "floor" or old_default):
                self.mode = "nearest"
            elif half_pixel and nearest == "round_prefer_ceil":
                self.mode = "nearest-exact"
            else:
                raise GraphError(f"Resize nearest with {transform} / {nearest}")
        elif mode in ("linear", "cubic"):
            if mode == "cubic" and float(attrs.get("cubic_coeff_a", -0.75)) != -0.75:
                raise GraphError("Resize cubic with cubic_coeff_a other than -0.75 (torch's)")
            if transform in ("half_pixel", "pytorch_half_pixel"):
                self.align_corners = False
            elif transform == "align_corners":
                self.align_corners = True
            else:
                raise GraphError(f"Resize {mode} with {transform}")
            self.mode = "bilinear" if mode == "linear" else "bicubic"
        else:
            raise GraphError(f"Resize mode {mode}")
        self.host_inputs = frozenset(self.positions.values())
        self.attr_scales = list(attrs["scales"]) if "scales" in attrs else None

    @staticmethod
    def _positions(opset: int, upsample: bool) -> dict[str, int]:
        if upsample or opset < 11:
            return {"scales": 1}
        return {"roi": 1, "scales": 2, "sizes": 3}

    def forward(self, x: torch.Tensor, *rest: Value | None) -> torch.Tensor:
        def given(name: str) -> Value | None:
            position = self.positions.get(name)
            if position is None or position - 1 >= len(rest):
                return None
            value = rest[position - 1]
            return value if value is not None and np.asarray(value).size else None

        sizes, scales = given("sizes"), given("scales")
        if x.dim() != 4:
            raise GraphError(f"Resize of a {x.dim()}-D tensor (4-D only)")
        if sizes is not None:
            target = _ints(sizes)
            if target[:2] != list(x.shape[:2]):
                raise GraphError("Resize of the batch or channel axis")
            return F.interpolate(x, size=target[2:], mode=self.mode, align_corners=self.align_corners)
        factors = _floats(scales) if scales is not None else self.attr_scales
        if not factors or factors[:2] != [1.0, 1.0]:
            raise GraphError("Resize without spatial scales or sizes, or of the batch or channel axis")
        return F.interpolate(
            x, scale_factor=factors[2:], mode=self.mode, align_corners=self.align_corners, recompute_scale_factor=False
        )


# ---------------------------------------------------------------------------------------------------------


_LAYERS_WITH_WEIGHTS = {"Conv", "ConvTranspose", "BatchNormalization"}
_DUAL_CONSTANT_SIZE = 16  # float constants up to this many elements are also kept as host values
_UNARY = set(_UNARY_FUNCTIONS) | {"LeakyRelu", "Elu", "HardSigmoid"}  # the ones with attributes
SUPPORTED_OPERATORS = frozenset(
    _LAYERS_WITH_WEIGHTS
    | _UNARY
    | set(_BINARY)
    | {
        "Clip", "Softmax", "LogSoftmax", "Gemm", "MatMul", "MaxPool", "AveragePool", "GlobalAveragePool",
        "GlobalMaxPool", "Shape", "Concat", "Transpose", "Reshape", "Flatten", "Unsqueeze", "Squeeze", "Gather",
        "Slice", "Pad", "Cast", "DepthToSpace", "Resize", "Upsample", "Constant",
    }
)  # fmt: skip


def _opset(model: onnx.ModelProto) -> int:
    for entry in model.opset_import:
        if entry.domain in ("", "ai.onnx"):
            return int(entry.version)
    return 1


def unsupported_operators(model: onnx.ModelProto) -> list[str]:
    """Operators the graph uses that `OnnxGraphModule` does not implement (sorted; empty: it converts)."""
    return sorted(
        {node.op_type for node in model.graph.node if node.domain not in ("", "ai.onnx")}
        | {node.op_type for node in model.graph.node if node.op_type not in SUPPORTED_OPERATORS}
    )


def _constant_value(node: onnx.NodeProto) -> np.ndarray:
    attrs = _attrs(node)
    if "value" in attrs:
        return numpy_helper.to_array(attrs["value"])
    typed = (
        ("value_float", np.float32),
        ("value_floats", np.float32),
        ("value_int", np.int64),
        ("value_ints", np.int64),
    )
    for name, dtype in typed:
        if name in attrs:
            return np.asarray(attrs[name], dtype=dtype)
    raise GraphError(f"Constant node {node.name or node.output[0]} without a supported value attribute")


class OnnxGraphModule(torch.nn.Module):
    """The graph's nodes run in order on torch tensors and host values. See the module docstring."""

    def __init__(self, model: onnx.ModelProto) -> None:
        super().__init__()
        missing = unsupported_operators(model)
        if missing:
            raise GraphError(f"operators not implemented here: {', '.join(missing)}")
        graph = model.graph
        opset = _opset(model)
        constants: dict[str, np.ndarray] = {init.name: numpy_helper.to_array(init) for init in graph.initializer}
        for node in graph.node:
            if node.op_type == "Constant":
                constants[node.output[0]] = _constant_value(node)
        self.input_names = [vi.name for vi in graph.input if vi.name not in constants]
        self.output_names = [vi.name for vi in graph.output]
        self.nodes = torch.nn.ModuleList()
        # Per node: input names, which are read as host values, which are small float constants held both
        # ways (see forward), output names.
        self._wiring: list[tuple[list[str], list[bool], list[bool], list[str]]] = []
        data_constants: set[str] = set()
        # Host copies only of what is read as a host value: weights live in their layers and buffers.
        host_constants: set[str] = {name for name in self.output_names if name in constants}
        for node in graph.node:
            if node.op_type == "Constant":
                continue
            op = self._build(node, opset, constants)
            names = list(node.input)
            if node.op_type in _LAYERS_WITH_WEIGHTS:
                names = names[:1]  # the weights live in the layer: it reads only its data input
            host = [i in op.host_inputs for i in range(len(names))]
            dual = [False] * len(names)
            for position, (name, is_host) in enumerate(zip(names, host, strict=True)):
                if not name or name not in constants:
                    continue
                if not is_host and constants[name].dtype.kind == "f":
                    data_constants.add(name)
                    # A small one may also scale a shape (Mul(Shape(x)[2], 2.0) -> Resize sizes): kept on
                    # the host as well, so that such arithmetic stays there.
                    if constants[name].size <= _DUAL_CONSTANT_SIZE:
                        dual[position] = True
                        host_constants.add(name)
                else:
                    host_constants.add(name)
            self.nodes.append(op)
            self._wiring.append((names, host, dual, list(node.output)))
        # Float constants that tensors are combined with become buffers: they follow `.to(device, dtype)`.
        self._buffer_of: dict[str, str] = {}
        for index, name in enumerate(sorted(data_constants)):
            self._buffer_of[name] = f"constant_{index}"
            self.register_buffer(f"constant_{index}", torch.from_numpy(np.array(constants[name])))
        self._host = {name: constants[name] for name in host_constants}

    @staticmethod
    def _build(node: onnx.NodeProto, opset: int, constants: dict[str, np.ndarray]) -> _Op:
        op, attrs = node.op_type, _attrs(node)

        def constant(position: int) -> np.ndarray | None:
            if position >= len(node.input) or not node.input[position]:
                return None
            name = node.input[position]
            if name not in constants:
                raise GraphError(f"{op} node {node.name or node.output[0]}: input {name} is not a constant")
            return constants[name]

        if op in ("Conv", "ConvTranspose"):
            weight = constant(1)
            assert weight is not None
            bias = constant(2)
            layer = _Conv if op == "Conv" else _ConvTranspose
            return layer(attrs, weight.astype(np.float32), None if bias is None else bias.astype(np.float32))
        if op == "BatchNormalization":
            parts = [constant(i) for i in range(1, 5)]
            if any(p is None for p in parts):
                raise GraphError("BatchNormalization without its four parameters")
            scale, bias, mean, var = (p for p in parts if p is not None)
            return _BatchNorm(float(attrs.get("epsilon", 1e-5)), scale, bias, mean, var)
        if op in _UNARY:
            return _unary(node, attrs)
        if op in _BINARY:
            return _Binary(*_BINARY[op])
        if op == "Clip":
            return _Clip(attrs.get("min"), attrs.get("max"))
        if op in ("Softmax", "LogSoftmax"):
            default_axis = -1 if opset >= 13 else 1
            return _Softmax(int(attrs.get("axis", default_axis)), coerce_2d=opset < 13, log=op == "LogSoftmax")
        if op == "Gemm":
            return _Gemm(attrs)
        if op == "MatMul":
            return _MatMul()
        if op in ("MaxPool", "AveragePool"):
            return _Pool(op, attrs)
        if op in ("GlobalAveragePool", "GlobalMaxPool"):
            return _GlobalPool(op)
        if op == "Shape":
            return _Shape(int(attrs.get("start", 0)), attrs.get("end"))
        if op == "Concat":
            return _Concat(int(attrs["axis"]))
        if op == "Transpose":
            return _Transpose(list(attrs["perm"]) if "perm" in attrs else None)
        if op == "Reshape":
            return _Reshape(bool(attrs.get("allowzero", 0)))
        if op == "Flatten":
            return _Flatten(int(attrs.get("axis", 1)))
        if op == "Unsqueeze":
            return _Unsqueeze(list(attrs["axes"]) if "axes" in attrs else None)
        if op == "Squeeze":
            return _Squeeze(list(attrs["axes"]) if "axes" in attrs else None)
        if op == "Gather":
            indices = constants.get(node.input[1])
            return _Gather(int(attrs.get("axis", 0)), indices)
        if op == "Slice":
            return _Slice(attrs if opset < 10 else None)
        if op == "Pad":
            return _Pad(attrs)
        if op == "Cast":
            return _Cast(int(attrs["to"]))
        if op == "DepthToSpace":
            return _DepthToSpace(int(attrs["blocksize"]), attrs.get("mode", "DCR"))
        if op in ("Resize", "Upsample"):
            return _Resize(attrs, opset, upsample=op == "Upsample")
        raise GraphError(f"operator {op}")  # unreachable: unsupported_operators checked first

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        values: dict[str, Value] = dict(zip(self.input_names, inputs, strict=True))
        for name, attribute in self._buffer_of.items():
            values[name] = getattr(self, attribute)
        host = self._host
        for op, (names, is_host, dual, outputs) in zip(self.nodes, self._wiring, strict=True):
            args: list[Value | None] = []
            for name, on_host in zip(names, is_host, strict=True):
                if not name:
                    args.append(None)
                elif on_host and name in host:
                    args.append(host[name])
                elif name in values:
                    args.append(values[name])
                else:
                    args.append(host[name])
            if any(dual):
                # A small float constant next to host values only is read from the host (shape
                # arithmetic); next to a tensor, or alone, from its buffer on the device.
                others = [a for a, d in zip(args, dual, strict=True) if not d and a is not None]
                if others and all(isinstance(a, np.ndarray) for a in others):
                    args = [host[n] if d else a for n, a, d in zip(names, args, dual, strict=True)]
            # Only the first output: the others (BatchNormalization's and Dropout's training outputs) are
            # never read in inference.
            values[outputs[0]] = op(*args)
        results = []
        for name in self.output_names:
            value = values[name] if name in values else host[name]
            if isinstance(value, np.ndarray):
                device = next((t.device for t in inputs), torch.device("cpu"))
                value = torch.from_numpy(np.ascontiguousarray(value)).to(device)
            results.append(value)
        return results[0] if len(results) == 1 else tuple(results)
