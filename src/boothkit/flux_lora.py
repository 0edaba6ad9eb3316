"""Flux.1 LoRA layers in diffusers' names and in kohya's (the BFL checkpoint's names), both ways, exactly.

diffusers keeps Flux's attention projections apart (``attn.to_q``, ``attn.to_k``, ``attn.to_v``);
the original checkpoint, and with it kohya sd-scripts, ComfyUI and most shared Flux LoRAs, fuses
them into one layer (``double_blocks.N.img_attn.qkv``; in the single blocks ``linear1`` holds q, k,
v and the MLP's input projection side by side). A LoRA of separate projections becomes a LoRA of
the fused layer without approximation: the parts' ``down`` matrices stacked (each scaled by its own
alpha / rank) and their ``up`` matrices on a block diagonal, so

    up_fused @ down_fused = [B_q A_q s_q; B_k A_k s_k; B_v A_v s_v]

row block by row block, with rank the sum of the parts' ranks and alpha equal to it (scale 1). The
way back splits ``up`` by rows and gives each part the fused ``down``: again exact. A layer is a
``(down (r, in), up (out, r), alpha)`` triple; its weight update is ``up @ down * alpha / r``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

Layer = tuple[torch.Tensor, torch.Tensor, float]  # down (rank, in), up (out, rank), alpha

# Per double block: BFL name -> diffusers module path(s) inside the block.
_DOUBLE: dict[str, str | tuple[str, ...]] = {
    "img_attn_qkv": ("attn.to_q", "attn.to_k", "attn.to_v"),
    "txt_attn_qkv": ("attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj"),
    "img_attn_proj": "attn.to_out.0",
    "txt_attn_proj": "attn.to_add_out",
    "img_mlp_0": "ff.net.0.proj",
    "img_mlp_2": "ff.net.2",
    "txt_mlp_0": "ff_context.net.0.proj",
    "txt_mlp_2": "ff_context.net.2",
    "img_mod_lin": "norm1.linear",
    "txt_mod_lin": "norm1_context.linear",
}
_SINGLE: dict[str, str | tuple[str, ...]] = {
    "linear1": ("attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp"),
    "linear2": "proj_out",
    "modulation_lin": "norm.linear",
}
_TOP: dict[str, str] = {
    "img_in": "x_embedder",
    "txt_in": "context_embedder",
    "time_in_in_layer": "time_text_embed.timestep_embedder.linear_1",
    "time_in_out_layer": "time_text_embed.timestep_embedder.linear_2",
    "guidance_in_in_layer": "time_text_embed.guidance_embedder.linear_1",
    "guidance_in_out_layer": "time_text_embed.guidance_embedder.linear_2",
    "vector_in_in_layer": "time_text_embed.text_embedder.linear_1",
    "vector_in_out_layer": "time_text_embed.text_embedder.linear_2",
    "final_layer_linear": "proj_out",
}
_BLOCK = re.compile(r"^(transformer_blocks|single_transformer_blocks)\.(\d+)\.(.+)$")
_KOHYA_BLOCK = re.compile(r"^(double_blocks|single_blocks)_(\d+)_(.+)$")
PREFIX = "lora_unet_"


@dataclass(frozen=True)
class FluxDims:
    """The widths a fused layer is split by: attention (heads x head dim) and the single blocks' MLP."""

    inner: int
    mlp: int

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> FluxDims:
        inner = int(config["num_attention_heads"]) * int(config["attention_head_dim"])
        return cls(inner, int(inner * 4.0))  # Flux's mlp_ratio

    @classmethod
    def from_layers(cls, layers: Mapping[str, Layer]) -> FluxDims | None:
        """Read off the LoRA itself: a q projection's output width, the MLP's when it is adapted."""
        inner = next((up.shape[0] for path, (_, up, _) in layers.items() if path.endswith("attn.to_q")), None)
        if inner is None:
            return None
        mlp = next(
            (up.shape[0] for path, (_, up, _) in layers.items() if path.endswith("proj_mlp")), 4 * inner
        )
        return cls(int(inner), int(mlp))

    def widths(self, parts: tuple[str, ...]) -> list[int]:
        return [self.mlp if p == "proj_mlp" else self.inner for p in parts]


def bfl_layer(path: str) -> tuple[str, int] | None:
    """The BFL layer a diffusers module of the transformer belongs to, and its place in a fused
    layer (0 for an unfused one); None when it has no BFL counterpart."""
    m = _BLOCK.match(path)
    if m is None:
        top = next((bfl for bfl, p in _TOP.items() if p == path), None)
        return (top, 0) if top else None
    kind, index, inner = m.groups()
    table, bfl_kind = (
        (_DOUBLE, "double_blocks") if kind == "transformer_blocks" else (_SINGLE, "single_blocks")
    )
    for name, parts in table.items():
        if parts == inner:
            return f"{bfl_kind}_{index}_{name}", 0
        if isinstance(parts, tuple) and inner in parts:
            return f"{bfl_kind}_{index}_{name}", parts.index(inner)
    return None


def _parts(bfl: str) -> tuple[str, ...] | None:
    """The diffusers paths a BFL layer stands for (several for a fused one); None if unknown."""
    if bfl in _TOP:
        return (_TOP[bfl],)
    m = _KOHYA_BLOCK.match(bfl)
    if m is None:
        return None
    kind, index, name = m.groups()
    table, block = (
        (_DOUBLE, "transformer_blocks") if kind == "double_blocks" else (_SINGLE, "single_transformer_blocks")
    )
    parts = table.get(name)
    if parts is None:
        return None
    return tuple(f"{block}.{index}.{p}" for p in ((parts,) if isinstance(parts, str) else parts))


def delta(layer: Layer) -> torch.Tensor:
    """The weight update a layer makes: up @ down * alpha / rank."""
    down, up, alpha = layer
    return (up.float() @ down.float().flatten(1)) * (alpha / down.shape[0])


def to_kohya(layers: Mapping[str, Layer], dims: FluxDims) -> tuple[dict[str, torch.Tensor], list[str]]:
    """diffusers transformer layers (path -> layer) -> kohya tensors (``lora_unet_<bfl>.lora_down``,
    ``.lora_up``, ``.alpha``), fusing q/k/v (and linear1's MLP part) exactly; and the paths that have
    no BFL counterpart."""
    groups: dict[str, dict[int, Layer]] = {}
    unmapped: list[str] = []
    for path, layer in layers.items():
        place = bfl_layer(path)
        if place is None:
            unmapped.append(path)
            continue
        groups.setdefault(place[0], {})[place[1]] = layer
    out: dict[str, torch.Tensor] = {}
    for bfl, members in groups.items():
        parts = _parts(bfl)
        assert parts is not None
        if len(parts) == 1:
            down, up, alpha = members[0]
            out[f"{PREFIX}{bfl}.lora_down.weight"] = down
            out[f"{PREFIX}{bfl}.lora_up.weight"] = up
            out[f"{PREFIX}{bfl}.alpha"] = torch.tensor(float(alpha))
            continue
        widths = dims.widths(tuple(p.rsplit(".", 1)[-1] for p in parts))
        present = sorted(members)
        ranks = [members[j][0].shape[0] for j in present]
        rank = sum(ranks)
        sample = members[present[0]][0]
        down = torch.cat([members[j][0].float() * (members[j][2] / members[j][0].shape[0]) for j in present])
        up = torch.zeros(sum(widths), rank, dtype=torch.float32)
        row, col = [0, *torch.tensor(widths).cumsum(0).tolist()], 0
        for j, r in zip(present, ranks, strict=True):
            block = members[j][1].float()
            if block.shape[0] != widths[j]:
                raise ValueError(f"{parts[j]}: {block.shape[0]} outputs, the fused layer expects {widths[j]}")
            up[row[j] : row[j + 1], col : col + r] = block
            col += r
        out[f"{PREFIX}{bfl}.lora_down.weight"] = down.to(sample.dtype)
        out[f"{PREFIX}{bfl}.lora_up.weight"] = up.to(sample.dtype)
        out[f"{PREFIX}{bfl}.alpha"] = torch.tensor(float(rank))
    return out, unmapped


def from_kohya(tensors: Mapping[str, torch.Tensor], dims: FluxDims) -> tuple[dict[str, Layer], list[str]]:
    """kohya ``lora_unet_<bfl>`` tensors -> diffusers transformer layers, splitting fused layers by
    rows (a part whose rows are all zero was not adapted and is left out); and the keys that fit no layer."""
    groups: dict[str, dict[str, torch.Tensor]] = {}
    unmapped: list[str] = []
    for key, value in tensors.items():
        name, _, suffix = key.partition(".")
        if not name.startswith(PREFIX) or suffix not in ("lora_down.weight", "lora_up.weight", "alpha"):
            unmapped.append(key)
            continue
        groups.setdefault(name[len(PREFIX) :], {})[suffix] = value
    layers: dict[str, Layer] = {}
    for bfl, group in groups.items():
        parts = _parts(bfl)
        if parts is None or "lora_down.weight" not in group or "lora_up.weight" not in group:
            unmapped.extend(f"{PREFIX}{bfl}.{s}" for s in group)
            continue
        down, up = group["lora_down.weight"], group["lora_up.weight"]
        alpha = float(group["alpha"].item()) if "alpha" in group else float(down.shape[0])
        if len(parts) == 1:
            layers[parts[0]] = (down, up, alpha)
            continue
        widths = dims.widths(tuple(p.rsplit(".", 1)[-1] for p in parts))
        if sum(widths) != up.shape[0]:
            unmapped.append(f"{PREFIX}{bfl} ({up.shape[0]} outputs, not {sum(widths)})")
            continue
        for path, block in zip(parts, torch.split(up, widths, dim=0), strict=True):
            if bool(block.abs().sum() > 0):
                layers[path] = (down.clone(), block.contiguous(), alpha)  # a tensor of its own per module
    return layers, unmapped


__all__ = ["PREFIX", "FluxDims", "Layer", "bfl_layer", "delta", "from_kohya", "to_kohya"]
