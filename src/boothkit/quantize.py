"""The frozen base denoiser's linear layers stored in fewer bits, as QLoRA does, so a LoRA of a large
transformer fits a smaller GPU: int8 or fp8 weight-only, or NF4 (4-bit NormalFloat), all through
torchao, on the CPU as on CUDA. The LoRA's own weights stay in full precision; peft wraps the
quantised layers as it wraps any other, and the saved LoRA applies to the unquantised model.
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from boothkit.config import QuantizeBase
from boothkit.errors import BoothkitError

NF4_BLOCK = 64  # QLoRA's: 64 weights share a scale ...
NF4_SCALER_BLOCK = 256  # ... and 256 scales share a second-level one


@contextmanager
def _quiet_torchao() -> Iterator[None]:
    """torchao logs, on import, every CUDA kernel library it cannot load on this machine, and
    torch a deprecation note per enum it registers: none of it concerns weight-only quantisation."""
    loggers = [logging.getLogger(n) for n in ("torchao", "torch.utils._pytree")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


def nf4_blocks(numel: int) -> tuple[int, int] | None:
    """(block size, scaler block size) for NF4 of a weight of ``numel`` values: QLoRA's 64 and 256,
    the second shrunk to divide the number of blocks of a small layer; None if 64 does not divide it."""
    if numel % NF4_BLOCK:
        return None
    return NF4_BLOCK, math.gcd(NF4_SCALER_BLOCK, numel // NF4_BLOCK)


@dataclass(frozen=True)
class Quantized:
    """What `quantize_linear_layers` did: layers quantised of all linear layers (an NF4 layer whose
    size 64 does not divide stays as it was), and their weights' bytes before and after."""

    layers: int
    linear_layers: int
    bytes_before: int
    bytes_after: int

    def __str__(self) -> str:
        mib = 1 << 20
        return (
            f"{self.layers} of {self.linear_layers} linear layers, "
            f"{self.bytes_before / mib:.1f} MiB -> {self.bytes_after / mib:.1f} MiB"
        )


def stored_bytes(tensor: torch.Tensor) -> int:
    """The memory a weight takes: a quantised tensor's parts (codes, scales) added up."""
    data = tensor.data if isinstance(tensor, torch.nn.Parameter) else tensor
    if type(data) is torch.Tensor:
        return data.numel() * data.element_size()
    names, _ = data.__tensor_flatten__()  # type: ignore[attr-defined]
    return sum(stored_bytes(getattr(data, n)) for n in names)


def quantize_linear_layers(module: torch.nn.Module, kind: QuantizeBase) -> Quantized:
    """Store the weights of ``module``'s linear layers as ``kind`` (frozen; biases stay as they are)."""
    try:
        with _quiet_torchao():
            from torchao.quantization import Float8WeightOnlyConfig, Int8WeightOnlyConfig, quantize_, to_nf4
    except ImportError as e:
        raise BoothkitError(
            f"--quantize-base {kind} needs torchao, which could not be imported ({e})",
            hint="pip install torchao (a version made for your torch), or drop --quantize-base",
        ) from None
    # peft notes that such a layer cannot merge its LoRA into it: boothkit never merges into it.
    warnings.filterwarnings("ignore", message="TorchaoLoraLinear was instantiated without")
    layers = [m for m in module.modules() if isinstance(m, torch.nn.Linear)]
    before = sum(stored_bytes(m.weight) for m in layers)
    done = len(layers)
    if kind != "nf4":
        quantize_(module, Int8WeightOnlyConfig() if kind == "int8" else Float8WeightOnlyConfig())
    else:
        for layer in layers:
            blocks = nf4_blocks(layer.weight.numel())
            if blocks is None:
                done -= 1
                continue
            quantised = to_nf4(layer.weight.detach(), *blocks)
            layer.weight = torch.nn.Parameter(quantised, requires_grad=False)
    return Quantized(done, len(layers), before, sum(stored_bytes(m.weight) for m in layers))


__all__ = ["Quantized", "nf4_blocks", "quantize_linear_layers", "stored_bytes"]
