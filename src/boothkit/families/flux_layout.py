"""Flux.1's transformer under two sets of names: diffusers' and the original checkpoint's (BFL's).

diffusers keeps the attention projections apart (``attn.to_q``, ``attn.to_k``, ``attn.to_v``); the
checkpoint Black Forest Labs published, and with it ComfyUI, Forge, kohya sd-scripts and most shared
Flux files, fuses them into one layer (``double_blocks.N.img_attn.qkv``; in the single blocks
``linear1`` holds q, k, v and the MLP's input projection side by side). The tables below are the
one statement of that correspondence: whole checkpoints are converted with them here, and LoRAs
(``boothkit.flux_lora``) with the same tables.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

# Per double block: BFL layer -> the diffusers modules it holds, in the order their rows are stacked.
DOUBLE: dict[str, tuple[str, ...]] = {
    "img_attn.qkv": ("attn.to_q", "attn.to_k", "attn.to_v"),
    "txt_attn.qkv": ("attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj"),
    "img_attn.proj": ("attn.to_out.0",),
    "txt_attn.proj": ("attn.to_add_out",),
    "img_mlp.0": ("ff.net.0.proj",),
    "img_mlp.2": ("ff.net.2",),
    "txt_mlp.0": ("ff_context.net.0.proj",),
    "txt_mlp.2": ("ff_context.net.2",),
    "img_mod.lin": ("norm1.linear",),
    "txt_mod.lin": ("norm1_context.linear",),
}
SINGLE: dict[str, tuple[str, ...]] = {
    "linear1": ("attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp"),
    "linear2": ("proj_out",),
    "modulation.lin": ("norm.linear",),
}
TOP: dict[str, str] = {
    "img_in": "x_embedder",
    "txt_in": "context_embedder",
    "time_in.in_layer": "time_text_embed.timestep_embedder.linear_1",
    "time_in.out_layer": "time_text_embed.timestep_embedder.linear_2",
    "guidance_in.in_layer": "time_text_embed.guidance_embedder.linear_1",
    "guidance_in.out_layer": "time_text_embed.guidance_embedder.linear_2",
    "vector_in.in_layer": "time_text_embed.text_embedder.linear_1",
    "vector_in.out_layer": "time_text_embed.text_embedder.linear_2",
    "final_layer.linear": "proj_out",
}
# The q/k RMSNorm scales: parameters, not layers.
DOUBLE_NORMS: dict[str, str] = {
    "img_attn.norm.query_norm.scale": "attn.norm_q.weight",
    "img_attn.norm.key_norm.scale": "attn.norm_k.weight",
    "txt_attn.norm.query_norm.scale": "attn.norm_added_q.weight",
    "txt_attn.norm.key_norm.scale": "attn.norm_added_k.weight",
}
SINGLE_NORMS: dict[str, str] = {
    "norm.query_norm.scale": "attn.norm_q.weight",
    "norm.key_norm.scale": "attn.norm_k.weight",
}
# The last modulation: BFL orders its output (shift, scale), diffusers (scale, shift).
FINAL_MODULATION = ("final_layer.adaLN_modulation.1", "norm_out.linear")
# What ComfyUI prefixes a diffusion model's keys with inside a checkpoint that bundles more.
COMFY_PREFIX = "model.diffusion_model."

_BLOCK = re.compile(r"^(transformer_blocks|single_transformer_blocks)\.(\d+)\.(.+)$")
_BFL_BLOCK = re.compile(r"^(double_blocks|single_blocks)\.(\d+)\.(.+)$")
_KINDS = {
    "transformer_blocks": ("double_blocks", DOUBLE),
    "single_transformer_blocks": ("single_blocks", SINGLE),
}
_DIFFUSERS_KINDS = {"double_blocks": "transformer_blocks", "single_blocks": "single_transformer_blocks"}


@dataclass(frozen=True)
class FluxDims:
    """The widths a fused layer is split by: attention (heads x head dim) and the single blocks' MLP."""

    inner: int
    mlp: int

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> FluxDims:
        inner = int(config["num_attention_heads"]) * int(config["attention_head_dim"])
        return cls(inner, int(inner * 4.0))  # Flux's mlp_ratio

    def widths(self, parts: tuple[str, ...]) -> list[int]:
        return [self.mlp if p.endswith("proj_mlp") else self.inner for p in parts]


def bfl_layer(path: str) -> tuple[str, int] | None:
    """The BFL layer a diffusers module of the transformer belongs to (``double_blocks.0.img_attn.qkv``),
    and its place in a fused layer (0 for an unfused one); None when it has no BFL counterpart."""
    m = _BLOCK.match(path)
    if m is None:
        top = next((bfl for bfl, p in TOP.items() if p == path), None)
        return (top, 0) if top else None
    kind, index, inner = m.groups()
    bfl_kind, table = _KINDS[kind]
    for name, parts in table.items():
        if inner in parts:
            return f"{bfl_kind}.{index}.{name}", parts.index(inner)
    return None


def diffusers_modules(bfl: str) -> tuple[str, ...] | None:
    """The diffusers modules a BFL layer stands for (several for a fused one); None if unknown."""
    if bfl in TOP:
        return (TOP[bfl],)
    m = _BFL_BLOCK.match(bfl)
    if m is None:
        return None
    kind, index, name = m.groups()
    parts = (DOUBLE if kind == "double_blocks" else SINGLE).get(name)
    if parts is None:
        return None
    return tuple(f"{_DIFFUSERS_KINDS[kind]}.{index}.{p}" for p in parts)


def bfl_layers(blocks: int, single_blocks: int) -> list[str]:
    """Every BFL layer name of a transformer with this many double and single blocks."""
    names = list(TOP)
    for i in range(blocks):
        names += [f"double_blocks.{i}.{n}" for n in DOUBLE]
    for i in range(single_blocks):
        names += [f"single_blocks.{i}.{n}" for n in SINGLE]
    return names


def _renames(blocks: int, single_blocks: int) -> dict[str, str]:
    """BFL name -> diffusers name of the parameters that are moved whole: the q/k norm scales and
    the last modulation (whose halves also swap, `_swap_halves`)."""
    out = {f"{FINAL_MODULATION[0]}.{s}": f"{FINAL_MODULATION[1]}.{s}" for s in ("weight", "bias")}
    for i in range(blocks):
        out.update({f"double_blocks.{i}.{b}": f"transformer_blocks.{i}.{d}" for b, d in DOUBLE_NORMS.items()})
    for i in range(single_blocks):
        out.update(
            {f"single_blocks.{i}.{b}": f"single_transformer_blocks.{i}.{d}" for b, d in SINGLE_NORMS.items()}
        )
    return out


def _moved(bfl: str, tensor: torch.Tensor) -> torch.Tensor:
    return _swap_halves(tensor) if bfl.startswith(FINAL_MODULATION[0]) else tensor


def _swap_halves(weight: torch.Tensor) -> torch.Tensor:
    first, second = weight.chunk(2, dim=0)
    return torch.cat([second, first], dim=0)


def _counts(names: list[str], pattern: re.Pattern[str]) -> tuple[int, int]:
    double: set[int] = set()
    single: set[int] = set()
    for name in names:
        m = pattern.match(name)
        if m is not None:
            (double if m.group(1) in ("transformer_blocks", "double_blocks") else single).add(int(m.group(2)))
    return len(double), len(single)


def to_bfl(state_dict: Mapping[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[str]]:
    """A diffusers ``FluxTransformer2DModel`` state dict -> the BFL checkpoint's tensors (q, k, v
    and the MLP input concatenated by rows: exact), and the diffusers keys with no BFL place."""
    blocks, single = _counts(list(state_dict), _BLOCK)
    out: dict[str, torch.Tensor] = {}
    used: set[str] = set()
    for bfl in bfl_layers(blocks, single):
        modules = diffusers_modules(bfl)
        assert modules is not None
        for suffix in ("weight", "bias"):
            keys = [f"{m}.{suffix}" for m in modules]
            if all(k in state_dict for k in keys):
                out[f"{bfl}.{suffix}"] = torch.cat([state_dict[k] for k in keys])
                used.update(keys)
    for bfl, name in _renames(blocks, single).items():
        if name in state_dict:
            out[bfl] = _moved(bfl, state_dict[name])
            used.add(name)
    return out, [k for k in state_dict if k not in used]


def from_bfl(
    state_dict: Mapping[str, torch.Tensor], dims: FluxDims
) -> tuple[dict[str, torch.Tensor], list[str]]:
    """The BFL checkpoint's tensors (bare, or under ComfyUI's ``model.diffusion_model.``) -> a
    diffusers ``FluxTransformer2DModel`` state dict, fused layers split by ``dims``; and the keys
    that fit nowhere."""
    bare = {k.removeprefix(COMFY_PREFIX): v for k, v in state_dict.items()}
    blocks, single = _counts(list(bare), _BFL_BLOCK)
    out: dict[str, torch.Tensor] = {}
    used: set[str] = set()
    for bfl in bfl_layers(blocks, single):
        modules = diffusers_modules(bfl)
        assert modules is not None
        for suffix in ("weight", "bias"):
            key = f"{bfl}.{suffix}"
            if key not in bare:
                continue
            widths = dims.widths(modules) if len(modules) > 1 else [bare[key].shape[0]]
            if bare[key].shape[0] != sum(widths):
                continue  # left unmapped: its rows are not the parts' widths
            for module, part in zip(modules, torch.split(bare[key], widths), strict=True):
                out[f"{module}.{suffix}"] = part.contiguous()
            used.add(key)
    for bfl, name in _renames(blocks, single).items():
        if bfl in bare:
            out[name] = _moved(bfl, bare[bfl])
            used.add(bfl)
    return out, [k for k in bare if k not in used]


def is_bfl_checkpoint(keys: list[str]) -> bool:
    """Whether a file's keys are a Flux.1 transformer under BFL's names (bare or ComfyUI-prefixed)."""
    bare = {k.removeprefix(COMFY_PREFIX) for k in keys}
    return "double_blocks.0.img_attn.qkv.weight" in bare and "img_in.weight" in bare


__all__ = [
    "COMFY_PREFIX",
    "DOUBLE",
    "SINGLE",
    "TOP",
    "FluxDims",
    "bfl_layer",
    "bfl_layers",
    "diffusers_modules",
    "from_bfl",
    "is_bfl_checkpoint",
    "to_bfl",
]
