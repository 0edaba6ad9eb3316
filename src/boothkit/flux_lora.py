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
Which diffusers module sits in which BFL layer is :mod:`boothkit.families.flux_layout`'s table.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import torch

from boothkit.families.flux_layout import DOUBLE, SINGLE, TOP, FluxDims, bfl_layer, diffusers_modules

Layer = tuple[torch.Tensor, torch.Tensor, float]  # down (rank, in), up (out, rank), alpha

PREFIX = "lora_unet_"
_KOHYA_BLOCK = re.compile(r"^(double_blocks|single_blocks)_(\d+)_(.+)$")
# kohya writes BFL's dotted names with underscores: the way back, per block kind and at the top.
_UNDERSCORED = {
    "double_blocks": {n.replace(".", "_"): n for n in DOUBLE},
    "single_blocks": {n.replace(".", "_"): n for n in SINGLE},
}
_TOP_UNDERSCORED = {n.replace(".", "_"): n for n in TOP}


def dims_of_layers(layers: Mapping[str, Layer]) -> FluxDims | None:
    """The widths read off the LoRA itself: a q projection's output width, the MLP's when it is adapted."""
    inner = next((up.shape[0] for path, (_, up, _) in layers.items() if path.endswith("attn.to_q")), None)
    if inner is None:
        return None
    mlp = next((up.shape[0] for path, (_, up, _) in layers.items() if path.endswith("proj_mlp")), 4 * inner)
    return FluxDims(int(inner), int(mlp))


def kohya_name(bfl: str) -> str:
    """``double_blocks.0.img_attn.qkv`` -> ``lora_unet_double_blocks_0_img_attn_qkv``."""
    return PREFIX + bfl.replace(".", "_")


def bfl_name(kohya: str) -> str | None:
    """The way back (without the prefix); None for a name that is no BFL layer."""
    if kohya in _TOP_UNDERSCORED:
        return _TOP_UNDERSCORED[kohya]
    m = _KOHYA_BLOCK.match(kohya)
    if m is None:
        return None
    kind, index, name = m.groups()
    dotted = _UNDERSCORED[kind].get(name)
    return f"{kind}.{index}.{dotted}" if dotted else None


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
        parts = diffusers_modules(bfl)
        assert parts is not None
        name = kohya_name(bfl)
        if len(parts) == 1:
            down, up, alpha = members[0]
            out[f"{name}.lora_down.weight"] = down
            out[f"{name}.lora_up.weight"] = up
            out[f"{name}.alpha"] = torch.tensor(float(alpha))
            continue
        widths = dims.widths(parts)
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
        out[f"{name}.lora_down.weight"] = down.to(sample.dtype)
        out[f"{name}.lora_up.weight"] = up.to(sample.dtype)
        out[f"{name}.alpha"] = torch.tensor(float(rank))
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
    for kohya, group in groups.items():
        bfl = bfl_name(kohya)
        parts = None if bfl is None else diffusers_modules(bfl)
        if parts is None or "lora_down.weight" not in group or "lora_up.weight" not in group:
            unmapped.extend(f"{PREFIX}{kohya}.{s}" for s in group)
            continue
        down, up = group["lora_down.weight"], group["lora_up.weight"]
        alpha = float(group["alpha"].item()) if "alpha" in group else float(down.shape[0])
        if len(parts) == 1:
            layers[parts[0]] = (down, up, alpha)
            continue
        widths = dims.widths(parts)
        if sum(widths) != up.shape[0]:
            unmapped.append(f"{PREFIX}{kohya} ({up.shape[0]} outputs, not {sum(widths)})")
            continue
        for path, block in zip(parts, torch.split(up, widths, dim=0), strict=True):
            if bool(block.abs().sum() > 0):
                layers[path] = (down.clone(), block.contiguous(), alpha)  # a tensor of its own per module
    return layers, unmapped


__all__ = [
    "PREFIX",
    "FluxDims",
    "Layer",
    "bfl_name",
    "delta",
    "dims_of_layers",
    "from_kohya",
    "kohya_name",
    "to_kohya",
]
