"""Per-convolution kernel choice for bf16 training on a CPU, measured like cuDNN's benchmark mode.

oneDNN's bf16 weight-gradient kernel is weak on small feature maps: on this project's 2-core
CPU it took 2.5x its forward's time in ResNet-18 at 64 px (1.7x in fp32), and 7.9 ms where an
im2col + matrix multiply takes 3.3 ms for a 512-channel 2x2 map. Its forward is in turn slower
in channels-last than in NCHW on such maps. Which way wins depends on the shape, the CPU and
the thread count, so each trainable convolution measures its candidates once, on the first
training batch it sees:

  - `layout`: channels-last (what the rest of the network runs in) or NCHW for this layer's
    forward and input gradient;
  - `weight_grad`: oneDNN's kernel, or im2col + one matrix multiply.

The default (channels-last, oneDNN) is kept unless another is clearly faster. A choice is
remembered on disk, keyed by the layer's shape and the machine, so two runs with the same seed
compute the same way (as `probe_training_precision` does for the precision). Only training
calls change: evaluation, export and serving see the plain `nn.Conv2d`, and the parameters and
their names never change.
"""

from __future__ import annotations

import json
import platform
import threading
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from tlearn.training.runtime import read_measurements, remember_measurement

DEFAULT = ("channels_last", "onednn")
CANDIDATES = (
    DEFAULT,
    ("channels_last", "matmul"),
    ("nchw", "onednn"),
    ("nchw", "matmul"),
)
CLEARLY_FASTER = 0.9  # another candidate must take under 90% of the default's time
_FORMATS = {"channels_last": torch.channels_last, "nchw": torch.contiguous_format}
_lock = threading.Lock()
_known: dict[str, tuple[str, str]] = {}  # this process's choices, by `signature`


def install(model: nn.Module, memory: Path | None = None) -> int:
    """Let every eligible convolution of `model` choose its kernels; returns how many can."""
    count = 0
    for module in model.modules():
        if eligible(module):
            module.__class__ = TunedConv2d
            module.tuning_memory = memory
            count += 1
    return count


def remove(model: nn.Module) -> dict[str, int]:
    """Turn the convolutions back into plain `nn.Conv2d`; returns how many used each choice."""
    used: dict[str, int] = {}
    for module in model.modules():
        if isinstance(module, TunedConv2d):
            for choice in module.__dict__.pop("choices", {}).values():
                name = "+".join(choice)
                used[name] = used.get(name, 0) + 1
            module.__dict__.pop("tuning_memory", None)
            module.__class__ = nn.Conv2d
    return used


def eligible(module: nn.Module) -> bool:
    """Plain 2-D convolutions whose arithmetic the candidates reproduce exactly."""
    return (
        type(module) is nn.Conv2d  # subclasses (timm's Conv2dSame) pad in their own forward
        and module.groups == 1
        and module.dilation == (1, 1)
        and module.padding_mode == "zeros"
        and isinstance(module.padding, tuple)
        and module.padding[0] == module.padding[1]
        and module.stride[0] == module.stride[1]
        and module.kernel_size[0] == module.kernel_size[1]
    )


class TunedConv2d(nn.Conv2d):
    """An `nn.Conv2d` that trains with the kernels measured fastest for its input's shape."""

    choices: dict[tuple, tuple[str, str]]  # by (input shape, grad, dtype, threads)
    tuning_memory: Path | None
    plain_in_eval = True  # evaluation runs nn.Conv2d's forward: inference copies may prepack it

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = _reduced_precision(x)
        if dtype is None or not (self.training and self.weight.requires_grad):
            return super().forward(x)
        # a cheap key at every call; the full signature (the memory's key) only for a new one
        key = (tuple(x.shape[1:]), x.requires_grad, dtype, torch.get_num_threads())
        choices = self.__dict__.setdefault("choices", {})
        if key not in choices:
            choices[key] = _choose(self, x, dtype, _signature(self, x, dtype))
        if choices[key] == DEFAULT:  # what autocast runs anyway, without the detour
            return super().forward(x)
        layout, weight_grad = choices[key]
        return _TunedConv.apply(
            x, self.weight, self.bias, self.stride[0], self.padding[0], dtype, layout, weight_grad
        )


def _reduced_precision(x: torch.Tensor) -> torch.dtype | None:
    """The autocast dtype when this call trains in bf16 on a CPU: the only case tuned."""
    if x.device.type != "cpu" or x.dim() != 4 or not torch.is_grad_enabled():
        return None
    if not torch.is_autocast_enabled("cpu"):
        return None
    dtype = torch.get_autocast_dtype("cpu")
    return dtype if dtype == torch.bfloat16 else None


def _signature(conv: nn.Conv2d, x: torch.Tensor, dtype: torch.dtype) -> str:
    # the batch size is left out: an epoch's short last batch reuses the full batches' choice
    return json.dumps(
        [
            list(x.shape[1:]),
            list(conv.weight.shape),
            conv.stride[0],
            conv.padding[0],
            conv.bias is not None,
            x.requires_grad,
            str(dtype),
            torch.get_num_threads(),
            platform.processor() or platform.machine(),
            torch.__version__,
        ]
    )


def _choose(
    conv: nn.Conv2d, x: torch.Tensor, dtype: torch.dtype, signature: str
) -> tuple[str, str]:
    with _lock:
        if signature in _known:
            return _known[signature]
        memory = conv.tuning_memory
        remembered = read_measurements(memory).get(signature) if memory else None
        if remembered is not None and tuple(remembered) in CANDIDATES:
            choice = tuple(remembered)
        else:
            choice = measure(conv, x, dtype)
            if memory:
                remember_measurement(memory, signature, list(choice))
        _known[signature] = choice
        return choice


def measure(
    conv: nn.Conv2d, x: torch.Tensor, dtype: torch.dtype, repeats: int = 3, rounds: int = 2
) -> tuple[str, str]:
    """Time one forward + backward of each candidate on stand-in tensors of `x`'s shape.

    Candidates take turns, `rounds` times, and each keeps its best time: the machine's speed
    drifts, and a choice is remembered for good. The stand-ins come from a generator of their
    own, so measuring never moves the run's random stream, and the layer's own weights and
    gradients are left alone.
    """
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(x.shape, generator=generator).contiguous(memory_format=torch.channels_last)
    images.requires_grad_(x.requires_grad)
    weight = conv.weight.detach().clone().requires_grad_()
    bias = None if conv.bias is None else conv.bias.detach().clone().requires_grad_()
    times = dict.fromkeys(CANDIDATES, float("inf"))
    for candidate in CANDIDATES * rounds:

        def step(candidate: tuple[str, str] = candidate) -> None:
            if candidate == DEFAULT:  # as `TunedConv2d` runs it: autocast's own convolution
                with torch.autocast("cpu", dtype=dtype):
                    out = F.conv2d(images, weight, bias, conv.stride, conv.padding)
            else:
                out = _TunedConv.apply(
                    images, weight, bias, conv.stride[0], conv.padding[0], dtype, *candidate
                )
            out.backward(torch.ones_like(out))

        times[candidate] = min(times[candidate], _fastest(step, repeats))
    best = min(times, key=times.__getitem__)
    return best if times[best] < CLEARLY_FASTER * times[DEFAULT] else DEFAULT


def _fastest(step: Callable[[], None], repeats: int) -> float:
    step()  # kernel creation and allocations
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        best = min(best, time.perf_counter() - start)
    return best


class _TunedConv(torch.autograd.Function):
    """conv2d in `dtype`, with its forward's layout and its weight gradient's kernel chosen."""

    @staticmethod
    def forward(ctx, x, weight, bias, stride, padding, dtype, layout, weight_grad):
        memory_format = _FORMATS[layout]
        x = x.to(dtype).contiguous(memory_format=memory_format)
        w = weight.to(dtype).contiguous(memory_format=memory_format)
        b = None if bias is None else bias.to(dtype)
        ctx.save_for_backward(x, w)
        ctx.setup = (stride, padding, layout, weight_grad, bias is not None)
        with torch.autocast("cpu", enabled=False):
            out = F.conv2d(x, w, b, stride, padding)
        return out.contiguous(memory_format=torch.channels_last)

    @staticmethod
    def backward(ctx, grad):
        x, w = ctx.saved_tensors
        stride, padding, layout, weight_grad, has_bias = ctx.setup
        grad = grad.to(x.dtype).contiguous(memory_format=_FORMATS[layout])
        wants_input, wants_weight, wants_bias = ctx.needs_input_grad[:3]
        by_onednn = wants_weight and weight_grad == "onednn"
        grad_x, grad_w, _ = torch.ops.aten.convolution_backward(
            grad, x, w, None, [stride] * 2, [padding] * 2, [1, 1], False, [0, 0], 1,
            [wants_input, by_onednn, False],
        )  # fmt: skip
        if wants_weight and weight_grad == "matmul":
            grad_w = weight_grad_by_matmul(x, grad, w.shape[-1], stride, padding)
        if grad_x is not None:
            grad_x = grad_x.contiguous(memory_format=torch.channels_last)
        grad_b = grad.sum(dim=(0, 2, 3)) if has_bias and wants_bias else None
        return grad_x, grad_w, grad_b, None, None, None, None, None


def weight_grad_by_matmul(
    x: torch.Tensor, grad: torch.Tensor, kernel: int, stride: int, padding: int
) -> torch.Tensor:
    """The weight gradient as one matrix multiply: grad as [N*Ho*Wo, O] against x's patches.

    Each row of the patch matrix holds the kernel window of one output position, channels
    last, so the product is [O, k*k*C], laid out as the weight's [O, C, k, k] by a view.
    """
    n, c = x.shape[:2]
    out_h, out_w = grad.shape[2:]
    rows = n * out_h * out_w
    pixels = x.permute(0, 2, 3, 1)  # [N, H, W, C]
    if kernel == 1 and padding == 0:
        patches = pixels[:, ::stride, ::stride].reshape(rows, c)
    else:
        padded = F.pad(pixels, (0, 0, padding, padding, padding, padding))
        windows = padded.unfold(1, kernel, stride).unfold(2, kernel, stride)[:, :out_h, :out_w]
        patches = windows.permute(0, 1, 2, 4, 5, 3).reshape(rows, kernel * kernel * c)
    per_output = grad.permute(0, 2, 3, 1).reshape(rows, -1)
    product = per_output.t() @ patches
    return product.view(-1, kernel, kernel, c).permute(0, 3, 1, 2)
