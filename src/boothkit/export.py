"""LoRA files for other tools: diffusers/peft <-> kohya (A1111, ComfyUI, sd-scripts), merging, metadata.

boothkit trains and saves LoRAs in the diffusers layout (`unet.<module>.lora_A.weight`, alphas in
peft's adapter config). A1111, ComfyUI and most sharing sites read the kohya layout instead
(`lora_unet_<module>.lora_down.weight` + a per-module `.alpha` tensor). This module converts both
ways, and when a base model is given it proves every conversion: both files are loaded into the
same base pipeline with diffusers' own `load_lora_weights` (which reads both layouts with its own
key mapping, an independent implementation) and the UNet's and text encoders' outputs compared.

UNet naming follows what kohya sd-scripts writes per family: SD1/SD2 LoRAs use diffusers module
names (`lora_unet_down_blocks_0_attentions_0_...`), SDXL LoRAs use the SGM/LDM names of sd-scripts'
SDXL UNet (`lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q`), which diffusers maps with
`_maybe_map_sgm_blocks_to_diffusers` and ComfyUI / A1111 read natively.
"""

from __future__ import annotations

import collections
import json
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from boothkit import flux_lora
from boothkit.adapters import load_embeddings
from boothkit.errors import BoothkitError
from boothkit.families.base import FAMILY_NAMES, FamilyName, load_pipeline_folder
from boothkit.families.single_file import (
    DENOISER_ONLY,
    SDXL_LAYOUT,
    UNetLayout,
    pipeline_family,
    read_header,
    save_single_file,
    unet_path_from_ldm,
    unet_path_to_ldm,
)
from boothkit.files import EMBEDDINGS_FILE, LORA_FILE, MODEL_DIR, SINGLE_FILE
from boothkit.io import atomic_save_safetensors, atomic_write, atomic_write_dir, remove_stale_temporaries
from boothkit.locks import Lock
from boothkit.metadata import ss_base_model_version

LoraLayout = Literal["kohya", "diffusers"]

ADAPTER_METADATA_KEY = "lora_adapter_metadata"  # where diffusers keeps peft's LoraConfig per component
# Metadata keys that mark boothkit export's own outputs, which exporting again may replace.
CONVERTED_KEY = "boothkit_converted_to"
MERGED_KEY = "boothkit_merged_lora"
COMPONENTS = ("unet", "transformer", "text_encoder", "text_encoder_2")
DENOISERS = ("unet", "transformer")
KOHYA_PREFIXES: dict[str, dict[str, str]] = {
    "sd1": {"unet": "lora_unet_", "text_encoder": "lora_te_"},
    "sd2": {"unet": "lora_unet_", "text_encoder": "lora_te_"},
    "sdxl": {"unet": "lora_unet_", "text_encoder": "lora_te1_", "text_encoder_2": "lora_te2_"},
    "flux1": {"transformer": flux_lora.PREFIX, "text_encoder": "lora_te1_"},  # transformer: flux_lora
}
# Real models' cross-attention widths, to name the family a LoRA was trained for.
CROSS_ATTENTION_DIM = {768: "sd1", 1024: "sd2", 2048: "sdxl"}
MAX_VERIFY_DIFF = 1e-4

# ----------------------------------------------------------------------------- module names


@dataclass
class LoraModule:
    """One adapted layer, independent of file layout: W' = W + (alpha / rank) * up @ down."""

    component: str  # "unet", "text_encoder" or "text_encoder_2"
    path: str  # diffusers module path inside the component (text encoders: with `text_model.`)
    down: torch.Tensor  # lora_A / lora_down, (rank, in, ...)
    up: torch.Tensor  # lora_B / lora_up, (out, rank, ...)
    alpha: float

    @property
    def rank(self) -> int:
        return int(self.down.shape[0])

    @property
    def name(self) -> str:
        return f"{self.component}.{self.path}"


# Multi-word identifiers of UNet / CLIP module names, so a kohya name (all dots turned into
# underscores) can be split back into its dotted path. Longest match first.
_COMPOUNDS: dict[int, set[tuple[str, ...]]] = {
    3: {("conv", "norm", "out"), ("time", "emb", "proj"), ("final", "layer", "norm")},
    2: {
        ("down", "blocks"), ("up", "blocks"), ("mid", "block"), ("input", "blocks"), ("middle", "block"),
        ("output", "blocks"), ("transformer", "blocks"), ("to", "q"), ("to", "k"), ("to", "v"), ("to", "out"),
        ("proj", "in"), ("proj", "out"), ("conv", "shortcut"), ("conv", "in"), ("conv", "out"),
        ("time", "embedding"), ("add", "embedding"), ("class", "embedding"), ("linear", "1"), ("linear", "2"),
        ("in", "layers"), ("out", "layers"), ("emb", "layers"), ("skip", "connection"), ("time", "embed"),
        ("label", "emb"), ("text", "model"), ("self", "attn"), ("q", "proj"), ("k", "proj"), ("v", "proj"),
        ("out", "proj"), ("layer", "norm1"), ("layer", "norm2"), ("token", "embedding"),
        ("position", "embedding"), ("text", "projection"),
    },
}  # fmt: skip

_UNET_MODULE = re.compile(
    r"^(?:(?:down_blocks|up_blocks)\.\d+\.(?:attentions|resnets|downsamplers|upsamplers)\.\d+"
    r"|mid_block\.(?:attentions|resnets)\.\d+|conv_in|conv_out|conv_norm_out"
    r"|(?:time|add|class)_embedding\.linear_[12])(?:\.\w+)*$"
)
_DOTTED_PATH = re.compile(r"^\w+(?:\.\w+)*$")
_TE_MODULE = re.compile(
    r"^(?:text_model\.encoder\.layers\.\d+\.(?:self_attn\.(?:q|k|v|out)_proj|mlp\.fc[12])|text_projection)$"
)


def underscore_to_path(name: str) -> str:
    """`down_blocks_0_attentions_0_proj_in` -> `down_blocks.0.attentions.0.proj_in`."""
    tokens = name.split("_")
    parts: list[str] = []
    i = 0
    while i < len(tokens):
        for size in (3, 2):
            if tuple(tokens[i : i + size]) in _COMPOUNDS[size]:
                parts.append("_".join(tokens[i : i + size]))
                i += size
                break
        else:
            parts.append(tokens[i])
            i += 1
    return ".".join(parts)


def _canonical_te_path(path: str) -> str:
    """Text-encoder module paths with the `text_model.` level, whatever transformers version wrote them."""
    return path if path.startswith(("text_model.", "text_projection")) else f"text_model.{path}"


def _valid_path(component: str, path: str) -> bool:
    if component == "transformer":  # any module: which ones the kohya layout has is flux_lora's question
        return bool(_DOTTED_PATH.match(path))
    return bool((_UNET_MODULE if component == "unet" else _TE_MODULE).match(path))


# ----------------------------------------------------------------------------- alphas (peft metadata)


def _component_configs(metadata: Mapping[str, str]) -> dict[str, dict[str, Any]]:
    """peft LoraConfig fields per component from a diffusers file's `lora_adapter_metadata`."""
    raw = metadata.get(ADAPTER_METADATA_KEY)
    if not raw:
        return {}
    try:
        flat = json.loads(raw)
    except json.JSONDecodeError as e:
        raise BoothkitError(f"the LoRA's {ADAPTER_METADATA_KEY} metadata is not valid JSON ({e})") from None
    out: dict[str, dict[str, Any]] = {}
    for key, value in flat.items():
        component, _, name = key.partition(".")
        out.setdefault(component, {})[name] = value
    return out


def _pattern_value(patterns: Mapping[str, Any], module: str) -> Any | None:
    """peft's rule for rank/alpha patterns: the first key that matches the end of the module name."""
    for key in patterns:
        for candidate in (module, module.removeprefix("text_model.")):
            if re.match(rf"(.*\.)?({key})$", candidate):
                return patterns[key]
    return None


def _module_alpha(config: Mapping[str, Any] | None, path: str, rank: int) -> float:
    """Effective alpha of one module, in kohya's convention (scale = alpha / rank)."""
    if config is None:
        return float(rank)  # no adapter config: diffusers' loader uses alpha = rank (scale 1)
    if config.get("use_dora") or config.get("lora_bias"):
        raise BoothkitError("DoRA / LoRA-bias adapters have no kohya equivalent; export them as diffusers")
    alpha = _pattern_value(config.get("alpha_pattern") or {}, path)
    alpha = float(config.get("lora_alpha", 8) if alpha is None else alpha)
    if config.get("use_rslora"):
        alpha *= math.sqrt(rank)  # rsLoRA scales by alpha / sqrt(rank)
    return alpha


def adapter_alphas(state_dict: Mapping[str, torch.Tensor], metadata: Mapping[str, str]) -> dict[str, float]:
    """Alpha of every module of a diffusers-layout LoRA (keys: `unet.<module path>`), from the
    peft adapter config diffusers stores in the file (lora_alpha, alpha_pattern, rsLoRA)."""
    modules, _ = _modules_from_diffusers(state_dict, None)
    configs = _component_configs(metadata)
    return {m.name: _module_alpha(configs.get(m.component), m.path, m.rank) for m in modules}


def _most_common(values: Iterable[Any]) -> Any:
    return collections.Counter(values).most_common(1)[0][0]


def adapter_config_json(modules: list[LoraModule]) -> str:
    """The `lora_adapter_metadata` JSON diffusers' loader reads: one peft LoraConfig per component,
    the most common rank / alpha as defaults and exact per-module patterns for the rest."""
    flat: dict[str, Any] = {}
    for component in COMPONENTS:
        mods = [m for m in modules if m.component == component]
        if not mods:
            continue
        # Without `text_model.`, the names match flattened and nested CLIP text models alike.
        names = {m.path: m.path.removeprefix("text_model.") for m in mods}
        r = _most_common(m.rank for m in mods)
        alpha = _most_common(m.alpha for m in mods)
        config = {
            "r": r,
            "lora_alpha": alpha,
            "target_modules": sorted(names.values()),
            "rank_pattern": {names[m.path]: m.rank for m in mods if m.rank != r},
            "alpha_pattern": {names[m.path]: m.alpha for m in mods if m.alpha != alpha},
            "init_lora_weights": True,
            "use_rslora": False,
            "use_dora": False,
            "lora_bias": False,
            "bias": "none",
        }
        flat.update({f"{component}.{k}": v for k, v in config.items()})
    return json.dumps(flat, indent=2, sort_keys=True)


# ----------------------------------------------------------------------------- layouts


def _split_diffusers_key(key: str) -> tuple[str, str, str] | None:
    """`unet.<path>.lora_A.weight` -> ("unet", path, "down"); older `.lora.down.weight` too."""
    component, _, rest = key.partition(".")
    if component not in COMPONENTS:
        return None
    for suffix, kind in (
        (".lora_A.weight", "down"),
        (".lora_B.weight", "up"),
        (".lora.down.weight", "down"),
        (".lora.up.weight", "up"),
        (".lora_linear_layer.down.weight", "down"),
        (".lora_linear_layer.up.weight", "up"),
    ):
        if rest.endswith(suffix):
            return component, rest[: -len(suffix)], kind
    return None


def _modules_from_diffusers(
    state_dict: Mapping[str, torch.Tensor], alphas: Mapping[str, float] | float | None
) -> tuple[list[LoraModule], list[str]]:
    pairs: dict[tuple[str, str], dict[str, torch.Tensor]] = {}
    unmapped: list[str] = []
    for key, value in state_dict.items():
        parts = _split_diffusers_key(key)
        if parts is None:
            unmapped.append(key)
            continue
        component, path, kind = parts
        if component not in DENOISERS:
            path = _canonical_te_path(path)
        if not _valid_path(component, path):
            unmapped.append(key)
            continue
        pairs.setdefault((component, path), {})[kind] = value
    modules = []
    for (component, path), tensors in pairs.items():
        if set(tensors) != {"down", "up"}:
            unmapped.append(f"{component}.{path} (lora_A or lora_B missing)")
            continue
        rank = int(tensors["down"].shape[0])
        modules.append(
            LoraModule(
                component, path, tensors["down"], tensors["up"], _lookup_alpha(alphas, component, path, rank)
            )
        )
    return modules, unmapped


def _lookup_alpha(alphas: Mapping[str, float] | float | None, component: str, path: str, rank: int) -> float:
    if alphas is None:
        return float(rank)
    if isinstance(alphas, (int, float)):
        return float(alphas)
    for name in (f"{component}.{path}", f"{component}.{path.removeprefix('text_model.')}"):
        if name in alphas:
            return float(alphas[name])
    raise BoothkitError(f"no alpha given for LoRA module {component}.{path}")


def _kohya_name(module: LoraModule, family: FamilyName, layout: UNetLayout) -> str | None:
    prefix = KOHYA_PREFIXES[family].get(module.component)
    if prefix is None:
        return None
    path = module.path
    if module.component == "unet" and family == "sdxl":
        ldm = unet_path_to_ldm(path, layout)
        if ldm is None:
            return None
        path = ldm
    return prefix + path.replace(".", "_")


def _modules_to_kohya(
    modules: list[LoraModule], family: FamilyName, layout: UNetLayout, dims: flux_lora.FluxDims | None = None
) -> tuple[dict[str, torch.Tensor], list[str]]:
    out: dict[str, torch.Tensor] = {}
    unmapped = []
    transformer = {m.path: (m.down, m.up, m.alpha) for m in modules if m.component == "transformer"}
    if transformer:  # Flux: q/k/v fused into the BFL layers, exactly
        fused, missed = flux_lora.to_kohya(transformer, dims or _flux_dims(transformer))
        out.update(fused)
        unmapped += [f"transformer.{p}" for p in missed]
    for m in modules:
        if m.component == "transformer":
            continue
        name = _kohya_name(m, family, layout)
        if name is None:
            unmapped.append(m.name)
            continue
        out[f"{name}.lora_down.weight"] = m.down
        out[f"{name}.lora_up.weight"] = m.up
        out[f"{name}.alpha"] = torch.tensor(m.alpha, dtype=torch.float32)
    return out, unmapped


def _kohya_module(name: str, family: FamilyName, layout: UNetLayout) -> tuple[str, str] | None:
    """`lora_unet_input_blocks_4_1_..._to_q` -> ("unet", diffusers module path)."""
    for component, prefix in KOHYA_PREFIXES[family].items():
        if not name.startswith(prefix):
            continue
        path = underscore_to_path(name[len(prefix) :])
        if component == "unet":
            if path.startswith(
                ("input_blocks.", "middle_block.", "output_blocks.", "time_embed.", "label_emb.", "out.")
            ):
                converted = unet_path_from_ldm(path, layout)
                if converted is None:
                    return None
                path = converted
        else:
            path = _canonical_te_path(path)
        return (component, path) if _valid_path(component, path) else None
    return None


def _modules_from_kohya(
    state_dict: Mapping[str, torch.Tensor],
    family: FamilyName,
    layout: UNetLayout,
    dims: flux_lora.FluxDims | None = None,
) -> tuple[list[LoraModule], list[str]]:
    groups: dict[str, dict[str, torch.Tensor]] = {}
    unmapped: list[str] = []
    modules = []
    if family == "flux1":  # the transformer's BFL layers split back into diffusers' modules
        unet = {k: v for k, v in state_dict.items() if k.startswith(flux_lora.PREFIX)}
        layers, missed = flux_lora.from_kohya(unet, dims or _flux_dims_of_kohya(unet))
        modules += [LoraModule("transformer", path, d, u, a) for path, (d, u, a) in layers.items()]
        unmapped += missed
        state_dict = {k: v for k, v in state_dict.items() if k not in unet}
    for key, value in state_dict.items():
        name, _, suffix = key.partition(".")
        if suffix not in ("lora_down.weight", "lora_up.weight", "alpha"):
            unmapped.append(key)
            continue
        groups.setdefault(name, {})[suffix] = value
    for name, tensors in groups.items():
        target = _kohya_module(name, family, layout)
        if target is None or "lora_down.weight" not in tensors or "lora_up.weight" not in tensors:
            unmapped.extend(f"{name}.{s}" for s in tensors)
            continue
        down, up = tensors["lora_down.weight"], tensors["lora_up.weight"]
        alpha = float(tensors["alpha"].item()) if "alpha" in tensors else float(down.shape[0])
        modules.append(LoraModule(target[0], target[1], down, up, alpha))
    return modules, unmapped


def _flux_dims(transformer: Mapping[str, flux_lora.Layer]) -> flux_lora.FluxDims:
    dims = flux_lora.dims_of_layers(transformer)
    if dims is None:
        raise BoothkitError(
            "cannot tell this Flux LoRA's attention width (it adapts no attn.to_q)",
            hint="pass the base model so the widths come from its transformer config",
        )
    return dims


def _flux_dims_of_kohya(tensors: Mapping[str, torch.Tensor]) -> flux_lora.FluxDims:
    """Widths from a kohya Flux LoRA: a fused qkv layer's rows are three attention widths."""
    for key, value in tensors.items():
        if key.endswith("attn_qkv.lora_up.weight"):
            inner = int(value.shape[0]) // 3
            linear1 = next((v for k, v in tensors.items() if k.endswith("linear1.lora_up.weight")), None)
            return flux_lora.FluxDims(
                inner, int(linear1.shape[0]) - 3 * inner if linear1 is not None else 4 * inner
            )
    raise BoothkitError(
        "cannot tell this Flux LoRA's attention width (it has no fused qkv layer)",
        hint="pass the base model so the widths come from its transformer config",
    )


def _modules_to_diffusers(modules: list[LoraModule]) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
    tensors: dict[str, torch.Tensor] = {}
    alphas: dict[str, float] = {}
    for m in modules:
        tensors[f"{m.name}.lora_A.weight"] = m.down
        tensors[f"{m.name}.lora_B.weight"] = m.up
        alphas[m.name] = m.alpha
    return tensors, alphas


def _layout(unet_config: Mapping[str, Any] | None) -> UNetLayout:
    return SDXL_LAYOUT if unet_config is None else UNetLayout.from_config(unet_config)


def _refuse_unmapped(unmapped: list[str], what: str) -> None:
    if unmapped:
        shown = ", ".join(unmapped[:5]) + (f" and {len(unmapped) - 5} more" if len(unmapped) > 5 else "")
        flux = all(u.startswith("transformer.") for u in unmapped)
        raise BoothkitError(
            f"{len(unmapped)} LoRA keys could not be mapped {what}: {shown}",
            hint="the kohya Flux layout holds only the layers of Black Forest Labs' checkpoint: export "
            "--format diffusers, or train without these layers in --target-modules"
            if flux
            else "is the family right? pass the base model so the UNet layout comes from its config",
        )


def to_kohya(
    state_dict: Mapping[str, torch.Tensor],
    *,
    family: FamilyName,
    alphas: Mapping[str, float] | float,
    unet_config: Mapping[str, Any] | None = None,
) -> dict[str, torch.Tensor]:
    """diffusers/peft LoRA keys -> kohya keys (`lora_unet_*`, `lora_te*_*`, `.lora_down/.lora_up/.alpha`).

    `alphas`: one alpha for every module, or per module keyed `unet.<module path>` as
    `adapter_alphas` returns them. `unet_config` is the base UNet's config; SDXL's block numbering
    depends on it (default: the SDXL base layout, shared by every SDXL fine-tune).
    """
    modules, unmapped = _modules_from_diffusers(state_dict, alphas)
    out, more = _modules_to_kohya(modules, family, _layout(unet_config))
    _refuse_unmapped(unmapped + more, f"to the kohya {family} layout")
    return out


def from_kohya(
    state_dict: Mapping[str, torch.Tensor],
    *,
    family: FamilyName,
    unet_config: Mapping[str, Any] | None = None,
) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
    """kohya LoRA keys -> diffusers/peft keys and per-module alphas (keyed `unet.<module path>`).

    Text-encoder keys come out as `text_encoder.text_model.*`, the layout every diffusers version
    loads. A module without an `.alpha` gets alpha = rank, as in sd-scripts.
    """
    modules, unmapped = _modules_from_kohya(state_dict, family, _layout(unet_config))
    _refuse_unmapped(unmapped, f"from the kohya {family} layout")
    return _modules_to_diffusers(modules)


def lora_layout(keys: Iterable[str]) -> LoraLayout | None:
    """Which layout a LoRA's keys are in (None: neither, e.g. a model checkpoint or LyCORIS)."""
    keys = list(keys)
    if keys and all(k.startswith(("lora_unet_", "lora_te_", "lora_te1_", "lora_te2_")) for k in keys):
        return "kohya"
    if keys and all(k.split(".")[0] in COMPONENTS for k in keys) and any(".lora" in k for k in keys):
        return "diffusers"
    return None


# ----------------------------------------------------------------------------- files


@dataclass
class LoraFile:
    """A LoRA read from disk: its tensors, header metadata and key layout."""

    path: Path
    tensors: dict[str, torch.Tensor]
    metadata: dict[str, str]
    layout: LoraLayout

    def modules(
        self, family: FamilyName, unet_config: Mapping[str, Any] | None = None
    ) -> tuple[list[LoraModule], list[str]]:
        """The file's layers with their effective alphas, and the keys that fit no layer."""
        if self.layout == "kohya":
            dims = flux_lora.FluxDims.from_config(unet_config) if family == "flux1" and unet_config else None
            if family == "flux1":
                return _modules_from_kohya(self.tensors, family, SDXL_LAYOUT, dims)
            return _modules_from_kohya(self.tensors, family, _layout(unet_config))
        modules, unmapped = _modules_from_diffusers(self.tensors, None)
        configs = _component_configs(self.metadata)
        for m in modules:
            m.alpha = _module_alpha(configs.get(m.component), m.path, m.rank)
        return modules, unmapped


def resolve_lora_file(src: Path) -> Path:
    """A run folder (holding `pytorch_lora_weights.safetensors`) or a `.safetensors` file."""
    src = Path(src)
    if src.is_dir():
        candidate = src / LORA_FILE
        if candidate.is_file():
            return candidate
        if (src / EMBEDDINGS_FILE).is_file():
            raise BoothkitError(
                f"{src} is a textual-inversion run: there is no LoRA to convert, and its {EMBEDDINGS_FILE} "
                "already loads as it is (A1111 and ComfyUI name an embedding after its file: copy it to "
                "e.g. sks.safetensors in their embeddings folder; diffusers: load_textual_inversion)"
            )
        if (src / MODEL_DIR / "model_index.json").is_file():
            single = src / SINGLE_FILE
            raise BoothkitError(
                f"{src} is a full fine-tune: there is no LoRA to convert; {src / MODEL_DIR} is a diffusers "
                "model (boothkit --model takes it)"
                + (f" and {single} the single file for A1111 / ComfyUI" if single.is_file() else ""),
                hint=None
                if single.is_file()
                else f"for A1111 / ComfyUI train with --save-single-file, which writes {SINGLE_FILE}",
            )
        found = sorted(p.name for p in src.glob("*.safetensors"))
        if len(found) == 1:
            return src / found[0]
        raise BoothkitError(
            f"{src} holds no {LORA_FILE}"
            + (f" but several .safetensors ({', '.join(found[:5])})" if found else ""),
            hint="pass the LoRA .safetensors file itself, or the run folder boothkit trained into",
        )
    if not src.is_file():
        raise BoothkitError(f"LoRA {src} does not exist")
    return src


def load_lora_file(src: Path) -> LoraFile:
    """Read a LoRA in either layout; malformed files and non-LoRA files raise BoothkitError."""
    path = resolve_lora_file(src)
    _, metadata = read_header(path)
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise BoothkitError(
            f"{path} is not a valid .safetensors file ({str(e).splitlines()[0][:200]})"
        ) from None
    layout = lora_layout(tensors)
    if layout is None:
        sample = ", ".join(list(tensors)[:3]) or "no tensors"
        raise BoothkitError(
            f"{path} is neither a diffusers nor a kohya LoRA (keys like {sample})",
            hint="boothkit converts LoRAs (lora_A/lora_B or lora_down/lora_up); LyCORIS/LoKr are not supported",
        )
    return LoraFile(path, tensors, metadata, layout)


def guess_lora_family(lora: LoraFile) -> FamilyName | None:
    """The family a LoRA names in its metadata, or that its keys / cross-attention width imply."""
    meta = lora.metadata
    if meta.get("boothkit_family") in ("sd1", "sd2", "sdxl", "flux1"):
        return meta["boothkit_family"]  # type: ignore[return-value]
    keys = list(lora.tensors)
    flux_keys = ("transformer.", "lora_unet_double_blocks_", "lora_unet_single_blocks_")
    if meta.get("ss_base_model_version", "").startswith("flux") or any(k.startswith(flux_keys) for k in keys):
        return "flux1"
    version = meta.get("ss_base_model_version", "")
    arch = meta.get("modelspec.architecture", "")
    if version.startswith("sdxl") or arch.startswith("stable-diffusion-xl"):
        return "sdxl"
    if version.startswith("sd_v2") or arch.startswith("stable-diffusion-v2"):
        return "sd2"
    if version.startswith("sd_v1") or arch.startswith("stable-diffusion-v1"):
        return "sd1"
    if any(
        k.startswith(("lora_te2_", "text_encoder_2.", "lora_unet_input_blocks", "lora_unet_output_blocks"))
        for k in keys
    ):
        return "sdxl"
    dim = _lora_cross_attention_dim(lora.tensors)
    return CROSS_ATTENTION_DIM.get(dim) if dim else None  # type: ignore[return-value]


def _lora_cross_attention_dim(tensors: Mapping[str, torch.Tensor]) -> int | None:
    for key, value in tensors.items():
        if ("attn2.to_k" in key or "attn2_to_k" in key) and (
            "lora_A" in key or "lora_down" in key or ".down." in key
        ):
            return int(value.shape[1])
    return None


# ----------------------------------------------------------------------------- family check


def _target_module(pipe: Any, component: str, path: str) -> torch.nn.Module | None:
    model = getattr(pipe, component, None)
    if model is None:
        return None
    if component != "unet" and not hasattr(model, "text_model"):
        path = path.removeprefix("text_model.")
    try:
        module = model.get_submodule(path)
    except AttributeError:
        return None
    return getattr(module, "base_layer", module)


def _fits(module: torch.nn.Module | None, m: LoraModule) -> bool:
    weight = getattr(module, "weight", None)
    if not isinstance(weight, torch.Tensor):
        return False
    return (
        m.down.shape[1] == weight.shape[1]
        and m.up.shape[0] == weight.shape[0]
        and m.down.shape[2:] == weight.shape[2:]
        and m.up.shape[1] == m.down.shape[0]
    )


def check_lora_matches(
    lora_state_dict: Mapping[str, torch.Tensor],
    pipe: Any,
    *,
    lora_name: str = "the LoRA",
    lora_family: FamilyName | None = None,
) -> None:
    """Refuse a LoRA whose layers do not exist in, or do not fit the shapes of, the base pipeline.

    Loading such a LoRA fails deep inside peft (or, worse, silently skips layers); this names both
    sides instead: which family the LoRA was trained for and what the base model is.
    """
    embedding = next((k for k in lora_state_dict if "lora_embedding_" in k), None)
    if embedding is not None:
        raise BoothkitError(
            f"{lora_name} adapts a token embedding ({embedding}): the kohya layout has no place for it, "
            "and boothkit converts and merges only LoRAs on linear and convolution layers",
            hint="load the run folder as it is (boothkit generate --lora RUN, or diffusers' load_lora_weights), "
            "or train without token_embedding in --text-encoder-targets",
        )
    base_family = pipeline_family(pipe)
    layout = lora_layout(lora_state_dict)
    if layout == "kohya" and base_family == "flux1":
        dims = flux_lora.FluxDims.from_config(pipe.transformer.config)
        modules, unmapped = _modules_from_kohya(lora_state_dict, base_family, SDXL_LAYOUT, dims)
    elif layout == "kohya":
        modules, unmapped = _modules_from_kohya(
            lora_state_dict, base_family, UNetLayout.from_config(pipe.unet.config)
        )
    else:
        modules, unmapped = _modules_from_diffusers(lora_state_dict, None)
    misfits = [m for m in modules if not _fits(_target_module(pipe, m.component, m.path), m)]
    if not misfits and not unmapped:
        return
    lora_dim = _lora_cross_attention_dim(lora_state_dict)
    if lora_family is None and lora_dim is not None:
        lora_family = CROSS_ATTENTION_DIM.get(lora_dim)  # type: ignore[assignment]
    unet = getattr(pipe, "unet", None)
    base_dim = f" ({unet.config.cross_attention_dim})" if unet is not None else ""
    trained = f"{lora_family or 'another model'}" + (f" (cross-attention dim {lora_dim})" if lora_dim else "")
    first = misfits[0].name if misfits else unmapped[0]
    raise BoothkitError(
        f"{lora_name} was trained for {trained} but the base model is {base_family}{base_dim}: "
        f"{len(misfits) + len(unmapped)} of {len(modules) + len(unmapped)} LoRA layers do not fit (first: {first})",
        hint=f"use a LoRA trained on a {base_family} model, or the base model this LoRA was trained on",
    )


# ----------------------------------------------------------------------------- metadata


def _output_metadata(
    source: Mapping[str, str], modules: list[LoraModule], family: FamilyName, target: LoraLayout
) -> dict[str, str]:
    """Carry the source's description over; rewrite the parts that describe the layout."""
    meta = {k: v for k, v in source.items() if k != ADAPTER_METADATA_KEY}
    meta[CONVERTED_KEY] = target
    meta.setdefault("format", "pt")
    meta.setdefault("boothkit_family", family)
    if modules:
        meta.setdefault("ss_network_module", "networks.lora")
        meta.setdefault("ss_network_dim", str(_most_common(m.rank for m in modules)))
        meta.setdefault("ss_network_alpha", str(_most_common(m.alpha for m in modules)))
    meta.setdefault("ss_base_model_version", ss_base_model_version(family))
    meta.setdefault("ss_v2", str(family == "sd2"))
    if target == "diffusers":
        meta[ADAPTER_METADATA_KEY] = adapter_config_json(modules)
    return meta


# ----------------------------------------------------------------------------- verification


@dataclass
class ExportReport:
    """What a conversion wrote and how it was checked."""

    output: Path
    source: Path
    source_format: LoraLayout
    target_format: LoraLayout
    family: FamilyName
    tensors: int
    modules: int
    unmapped: list[str] = field(default_factory=list)
    max_abs_diff: dict[str, float] = field(default_factory=dict)  # per component, source vs output
    lora_effect: dict[str, float] = field(default_factory=dict)  # per component, LoRA vs base model
    verified: bool = False
    compared: str = "outputs"  # what verification compared: the model's outputs, or each layer's update
    embeddings: Path | None = None  # a pivotal run's learned token, written beside the output

    @property
    def ok(self) -> bool:
        return not self.unmapped and all(d <= MAX_VERIFY_DIFF for d in self.max_abs_diff.values())

    def format(self) -> str:
        """A one-screen summary for the CLI."""
        lines = [
            f"LoRA {self.source} ({self.source_format}) -> {self.output} ({self.target_format})",
            f"  family {self.family}: {self.modules} layers, {self.tensors} tensors, {len(self.unmapped)} unmapped keys",
        ]
        lines += [f"    unmapped: {k}" for k in self.unmapped[:10]]
        if self.embeddings is not None:
            lines.append(f"  {embeddings_note(self.embeddings)}")
        if not self.verified:
            lines.append("  not verified (pass a base model to load both files and compare outputs)")
        for component, diff in self.max_abs_diff.items():
            effect = self.lora_effect.get(component, float("nan"))
            verdict = "ok" if diff <= MAX_VERIFY_DIFF else "MISMATCH"
            effect_text = "LoRA changes output by" if self.compared == "outputs" else "largest weight update"
            lines.append(
                f"  {component:<15} max |source - output| = {diff:.2e}  ({effect_text} {effect:.2e})  {verdict}"
            )
        return "\n".join(lines)


@torch.no_grad()
def _probe(pipe: Any, seed: int = 0) -> dict[str, torch.Tensor]:
    """Outputs of the UNet and each text encoder on fixed inputs: what a LoRA changes."""
    g = torch.Generator().manual_seed(seed)
    unet = pipe.unet
    cfg = unet.config
    size = 2 ** len(cfg.block_out_channels)
    sample = torch.randn(1, cfg.in_channels, size, size, generator=g)
    context = torch.randn(1, 8, cfg.cross_attention_dim, generator=g)
    kwargs: dict[str, Any] = {}
    if cfg.get("addition_embed_type") == "text_time":
        pooled = cfg.projection_class_embeddings_input_dim - 6 * cfg.addition_time_embed_dim
        kwargs["added_cond_kwargs"] = {
            "text_embeds": torch.randn(1, pooled, generator=g),
            "time_ids": torch.tensor([[64.0, 64.0, 0.0, 0.0, 64.0, 64.0]]),
        }
    out = {"unet": unet(sample, torch.tensor([500]), context, **kwargs).sample}
    for name in ("text_encoder", "text_encoder_2"):
        encoder = getattr(pipe, name, None)
        if encoder is None:
            continue
        tokenizer = getattr(pipe, "tokenizer" if name == "text_encoder" else "tokenizer_2")
        ids = tokenizer(
            "a photo of sks dog", padding="max_length", max_length=tokenizer.model_max_length,
            truncation=True, return_tensors="pt",
        ).input_ids  # fmt: skip
        out[name] = encoder(ids)[0]
    return out


def _loaded_modules(pipe: Any) -> set[str]:
    """Names of the layers that carry a LoRA after `load_lora_weights`."""
    names = set()
    for component in COMPONENTS:
        model = getattr(pipe, component, None)
        if model is None:
            continue
        for name, module in model.named_modules():
            if hasattr(module, "lora_A") and len(module.lora_A):
                path = name if component in DENOISERS else _canonical_te_path(name)
                names.add(f"{component}.{path}")
    return names


_KOHYA_ATTENTION = {"to_q": "q_proj", "to_k": "k_proj", "to_v": "v_proj", "to_out": "out_proj"}


def _reattach_alphas(alphas: Mapping[str, float], pipe: Any) -> dict[str, float]:
    """Give diffusers' kohya alphas the names its peft config builder matches modules with.

    diffusers <= 0.42 names a kohya attention alpha after its old attention-processor key
    (`...attn1.processor.to_q_lora.down.weight.alpha`), which matches no module, so peft drops
    every per-module alpha and uses the most common one. Only the names are changed here; which
    module each alpha belongs to is still decided by diffusers' own key conversion.
    """
    fixed: dict[str, float] = {}
    for key, value in alphas.items():
        component, _, name = key.partition(".")
        name = name.removesuffix(".alpha")
        if component == "unet":
            name = re.sub(r"\.processor\.(to_[qkv])_lora\.down\.weight$", r".\1", name)
            name = re.sub(r"\.processor\.to_out_lora\.down\.weight$", ".to_out.0", name)
            fixed[f"unet.{name}.alpha"] = value
            continue
        m = re.match(r"^(.*)\.(to_q|to_k|to_v|to_out)_lora\.down\.weight$", name)
        name = (
            f"{m.group(1)}.{_KOHYA_ATTENTION[m.group(2)]}"
            if m
            else re.sub(r"\.lora(_linear_layer)?\.down\.weight$", "", name)
        )
        if not hasattr(getattr(pipe, component, None), "text_model"):
            name = name.removeprefix("text_model.")
        fixed[f"{component}.{name}.lora.down.weight.alpha"] = value
    return fixed


def _uniform_alphas(path: Path) -> bool:
    per_component: dict[str, set[float]] = {}
    for key, value in load_file(str(path)).items():
        if key.endswith(".alpha"):
            per_component.setdefault(key.split("_")[1], set()).add(float(value.item()))
    return all(len(v) <= 1 for v in per_component.values())


def _load_into(pipe: Any, path: Path, adapter_name: str) -> None:
    """diffusers' `load_lora_weights`, or for a kohya file with per-module alphas the same steps
    with `_reattach_alphas` applied between its key conversion and the peft config."""
    if lora_layout(read_header(path)[0]) != "kohya" or _uniform_alphas(path):
        pipe.load_lora_weights(str(path.parent), weight_name=path.name, adapter_name=adapter_name)
        return
    extra = {"unet_config": pipe.unet.config} if pipeline_family(pipe) == "sdxl" else {}
    state_dict, alphas = pipe.lora_state_dict(str(path.parent), weight_name=path.name, **extra)
    alphas = _reattach_alphas(alphas or {}, pipe)
    pipe.load_lora_into_unet(
        state_dict, network_alphas=alphas, unet=pipe.unet, adapter_name=adapter_name, _pipeline=pipe
    )
    for name in ("text_encoder", "text_encoder_2"):
        encoder = getattr(pipe, name, None)
        if encoder is not None:
            pipe.load_lora_into_text_encoder(
                state_dict, network_alphas=alphas, text_encoder=encoder, prefix=name,
                lora_scale=pipe.lora_scale, adapter_name=adapter_name, _pipeline=pipe,
            )  # fmt: skip


def _outputs_with(pipe: Any, path: Path) -> tuple[dict[str, torch.Tensor], set[str]]:
    _load_into(pipe, path, "boothkit_check")
    try:
        # Fresh (aligned) copies: CPU kernels round differently for tensors at odd offsets inside a
        # loaded file's buffer, which would blur a bit-exact comparison by ~1e-5.
        for component in COMPONENTS:
            model = getattr(pipe, component, None)
            for name, param in model.named_parameters() if model is not None else ():
                if "lora_" in name:
                    param.data = param.data.clone()
        return _probe(pipe), _loaded_modules(pipe)
    finally:
        pipe.unload_lora_weights()


def verify_conversion(
    pipe: Any, source: Path, output: Path, expected: Iterable[str]
) -> tuple[dict[str, float], dict[str, float], list[str]]:
    """Load each file into `pipe` with diffusers' own loader and compare the model outputs.

    Returns (max |source - output| per component, max |LoRA - base| per component, layers that one
    of the files failed to put on the model). The second shows the check is not vacuous.
    """
    base = _probe(pipe)
    out_a, loaded_a = _outputs_with(pipe, source)
    out_b, loaded_b = _outputs_with(pipe, output)
    diffs = {k: float((out_a[k] - out_b[k]).abs().max()) for k in out_a}
    effect = {k: float((out_a[k] - base[k]).abs().max()) for k in out_a}
    expected = set(expected)
    missing = sorted((expected - loaded_a) | (expected - loaded_b) | (loaded_a ^ loaded_b))
    return diffs, effect, missing


def verify_updates(
    source: list[LoraModule], output: list[LoraModule]
) -> tuple[dict[str, float], dict[str, float], list[str]]:
    """Compare the weight update (up @ down * alpha / rank) of every layer in the two lists: the
    check for a layout diffusers can't load at the model's size (a tiny Flux's fused layers). Returns
    max |source - output| and max |update| per component, and the layers only one side has."""
    a = {m.name: flux_lora.delta((m.down, m.up, m.alpha)) for m in source}
    b = {m.name: flux_lora.delta((m.down, m.up, m.alpha)) for m in output}
    diffs: dict[str, float] = {}
    effect: dict[str, float] = {}
    for name in a.keys() & b.keys():
        component = name.split(".")[0]
        diffs[component] = max(diffs.get(component, 0.0), float((a[name] - b[name]).abs().max()))
        effect[component] = max(effect.get(component, 0.0), float(a[name].abs().max()))
    return diffs, effect, sorted(a.keys() ^ b.keys())


def _scaled_state_dict(modules: list[LoraModule]) -> dict[str, torch.Tensor]:
    """diffusers-layout tensors with each layer's alpha / rank folded into lora_B: what
    `load_lora_weights` applies exactly when given a state dict (it then scales by 1)."""
    out: dict[str, torch.Tensor] = {}
    for m in modules:
        out[f"{m.name}.lora_A.weight"] = m.down.clone()
        out[f"{m.name}.lora_B.weight"] = m.up * (m.alpha / m.rank)
    return out


def _denoiser_config(pipe: Any) -> dict[str, Any] | None:
    """The base model's UNet or transformer config (what the LoRA's layout depends on)."""
    if pipe is None:
        return None
    return dict((getattr(pipe, "unet", None) or pipe.transformer).config)


# ----------------------------------------------------------------------------- export


def _output_file(output: Path, target: LoraLayout, source: Path, metadata: Mapping[str, str]) -> Path:
    output = Path(output)
    if output.suffix == ".safetensors":
        return output
    if target == "diffusers":
        return output / LORA_FILE
    stem = metadata.get("ss_output_name") or (source.parent.name if source.name == LORA_FILE else source.stem)
    return output / f"{stem}.safetensors"


def _remove_leftovers(output: Path) -> None:
    """What an export to ``output`` that was killed left behind (hidden temporary files and folders,
    for the file and its embeddings): taken away under the destination's lock."""
    remove_stale_temporaries(output.parent, output.name)
    remove_stale_temporaries(output.parent, embeddings_path(output).name)


def _written_by_export(path: Path, key: str) -> bool:
    """Whether ``path`` is an earlier output of this kind of export (its metadata names ``key``), which
    exporting again may replace; anything else that is there belongs to the user."""
    try:
        if path.is_dir():
            return key in json.loads((path / "boothkit.json").read_text(encoding="utf-8"))
        with safe_open(str(path), "pt") as f:
            return key in (f.metadata() or {})
    except Exception:  # not ours, unreadable or not safetensors: keep it
        return False


def _refuse_existing(output: Path, key: str, sources: Sequence[Path], inputs: Sequence[Path]) -> None:
    """An export never replaces its source, a base model or anything else it did not write, and
    never writes inside a base model's folder. It may replace its own earlier output."""
    resolved = output.resolve()
    for source in sources:
        if source.exists() and resolved == source.resolve():
            raise BoothkitError(
                f"--output {output} would replace {source}, an input of this export; nothing was written",
                hint="choose another --output path",
            )
    for folder in inputs:
        if folder.is_dir() and folder.resolve() in resolved.parents:
            raise BoothkitError(
                f"--output {output} is inside {folder}, an input of this export; nothing was written",
                hint=f"choose a path outside {folder}",
            )
    occupied = output.exists() and (output.is_file() or any(output.iterdir()))
    if occupied and not _written_by_export(output, key):
        raise BoothkitError(
            f"--output {output} already exists and is not an earlier export; nothing was overwritten",
            hint="choose a new path, or move the old one away first",
        )


def run_embeddings(lora: Path) -> Path | None:
    """The learned token of the run a LoRA file belongs to (pivotal tuning), if any."""
    path = lora.parent / EMBEDDINGS_FILE
    return path if lora.name == LORA_FILE and path.is_file() else None


def embeddings_path(output: Path) -> Path:
    """Where an export puts a run's learned token: ``NAME_emb.safetensors`` beside ``NAME.safetensors``
    (A1111 and ComfyUI name an embedding after its file; diffusers' advanced script uses this name)."""
    return output.with_name(f"{output.stem}_emb.safetensors")


def embeddings_note(path: Path) -> str:
    return (
        f"the run's learned token -> {path}: load it as an embedding beside it "
        f"(A1111 / ComfyUI prompts name it by its file name, {path.stem}; diffusers: load_textual_inversion)"
    )


def _copy_embeddings(source: Path, output: Path, key: str = CONVERTED_KEY) -> Path:
    with safe_open(str(source), "pt") as f:
        metadata = dict(f.metadata() or {})
    metadata[key] = "embeddings"
    return atomic_save_safetensors(load_file(str(source)), output, metadata)


def export_lora(
    src: Path,
    *,
    format: LoraLayout,
    output: Path,
    base_model_dir: Path | None = None,
) -> ExportReport:
    """Convert a LoRA (run folder or `.safetensors`, either layout) to `format`, and prove it.

    With `base_model_dir`, both files are loaded into that base pipeline with diffusers' loader and
    the UNet / text-encoder outputs compared; the output only appears (atomically) when every
    layer mapped and the outputs agree to 1e-4. `output` is a `.safetensors` path or a folder.
    """
    if format not in ("kohya", "diffusers"):
        raise BoothkitError(f"unknown LoRA format {format!r}: choose kohya or diffusers")
    lora = load_lora_file(Path(src))
    if lora.layout == format:
        raise BoothkitError(f"{lora.path} is already a {format} LoRA", hint="choose the other --format")
    pipe = load_pipeline_folder(base_model_dir) if base_model_dir is not None else None
    family = pipeline_family(pipe) if pipe is not None else guess_lora_family(lora)
    if family is None:
        raise BoothkitError(
            f"cannot tell which model family {lora.path} is for (no family in its metadata)",
            hint="pass the base model folder so the family and UNet layout come from it",
        )
    flux = family == "flux1"
    unet_config = _denoiser_config(pipe)
    if pipe is not None:
        check_lora_matches(
            lora.tensors, pipe, lora_name=f"LoRA {lora.path}", lora_family=guess_lora_family(lora)
        )
    modules, unmapped = lora.modules(family, unet_config)
    dims = flux_lora.FluxDims.from_config(unet_config) if flux and unet_config else None
    if format == "kohya":
        tensors, more = _modules_to_kohya(
            modules, family, SDXL_LAYOUT if flux else _layout(unet_config), dims
        )
        unmapped += more
    else:
        tensors, _ = _modules_to_diffusers(modules)
    _refuse_unmapped(unmapped, f"to the {format} layout")
    metadata = _output_metadata(lora.metadata, modules, family, format)
    final = _output_file(Path(output), format, lora.path, lora.metadata)
    bases = [Path(base_model_dir)] if base_model_dir is not None else []
    embeddings = run_embeddings(lora.path)
    report = ExportReport(final, lora.path, lora.layout, format, family, len(tensors), len(modules))

    def write(tmp: Path) -> None:
        save_file(
            {k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(tmp), metadata=dict(metadata)
        )

    def verify(tmp: Path) -> None:  # before the file takes its name: a conversion that differs never appears
        if flux:  # diffusers' kohya reader knows only full-size Flux: compare every layer's update
            written = LoraFile(tmp, load_file(str(tmp)), dict(metadata), format)
            report.max_abs_diff, report.lora_effect, report.unmapped = verify_updates(
                modules, written.modules(family, unet_config)[0]
            )
            report.verified, report.compared = True, "updates"
        elif pipe is not None:
            expected = [m.name for m in modules]
            report.max_abs_diff, report.lora_effect, report.unmapped = verify_conversion(
                pipe, lora.path, tmp, expected
            )
            report.verified = True
        if report.verified and not report.ok:
            raise BoothkitError(f"the converted LoRA does not reproduce the source:\n{report.format()}")

    with Lock(final, "export destination"):
        _refuse_existing(final, CONVERTED_KEY, [lora.path, *bases], bases)
        if embeddings is not None:
            _refuse_existing(embeddings_path(final), CONVERTED_KEY, [embeddings, *bases], bases)
        _remove_leftovers(final)
        atomic_write(final, write, suffix=".tmp.safetensors", check=verify)
        if embeddings is not None:
            report.embeddings = _copy_embeddings(embeddings, embeddings_path(final))
    return report


# ----------------------------------------------------------------------------- merge


def _refuse_partial_load(lora: LoraFile, pipe: Any, family: FamilyName) -> None:
    """A LoRA diffusers only partly applied would merge into a silently different model."""
    modules, _ = lora.modules(family, _denoiser_config(pipe))
    missing = sorted({m.name for m in modules} - _loaded_modules(pipe))
    if missing:
        raise BoothkitError(
            f"diffusers applied only {len(modules) - len(missing)} of the {len(modules)} layers of LoRA "
            f"{lora.path} (first missing: {missing[0]})",
            hint="convert it with export_lora and no base model (boothkit reads every layer) and merge the result",
        )


def merge_lora(
    base_model_dir: Path,
    lora: Path,
    *,
    scale: float = 1.0,
    output: Path,
    single_file: bool = False,
) -> Path:
    """Fuse a LoRA into its base model at `scale`: a standalone model that needs no LoRA loader.

    Written as a diffusers folder, or (`single_file=True`) as one LDM-layout `.safetensors` for
    A1111 / ComfyUI. Either appears only when complete (temporary name, then rename).
    """
    if not math.isfinite(scale):  # the CLI's --scale is checked when parsed; this is the API's
        raise BoothkitError(f"--scale {scale} is not finite; give a finite value, e.g. 1")
    source = load_lora_file(Path(lora))
    with Lock(Path(output), "export destination"):
        _refuse_existing(
            Path(output), MERGED_KEY, [source.path, Path(base_model_dir)], [Path(base_model_dir)]
        )
        _remove_leftovers(Path(output))
        return _merge(base_model_dir, source, scale=scale, output=Path(output), single_file=single_file)


def _merge(base_model_dir: Path, source: LoraFile, *, scale: float, output: Path, single_file: bool) -> Path:
    pipe = load_pipeline_folder(base_model_dir)
    check_lora_matches(
        source.tensors, pipe, lora_name=f"LoRA {source.path}", lora_family=guess_lora_family(source)
    )
    family = pipeline_family(pipe)
    embeddings = run_embeddings(source.path)
    if embeddings is not None and not single_file:
        load_embeddings(pipe, embeddings)  # the merged folder's tokenizer and text encoder learn the token
    elif embeddings is not None:
        _refuse_existing(embeddings_path(Path(output)), MERGED_KEY, [embeddings], [Path(base_model_dir)])
    if family == "flux1":  # its layers as diffusers reads them at any size, alphas folded in
        modules, _ = source.modules(family, _denoiser_config(pipe))
        pipe.load_lora_weights(_scaled_state_dict(modules), adapter_name="boothkit_merge")
    else:
        _load_into(pipe, source.path, "boothkit_merge")
    _refuse_partial_load(source, pipe, family)
    adapted = sorted({name.split(".")[0] for name in _loaded_modules(pipe)})
    if family in DENOISER_ONLY and single_file and len(adapted) > 1:
        raise BoothkitError(
            f"LoRA {source.path} adapts the text encoder too, and a {FAMILY_NAMES[family]} single file "
            "holds the transformer alone (the VAE and text encoders are loaded beside it): the text "
            "encoder's part would be lost",
            hint="merge into a diffusers folder (drop --single-file), or train without --train-text-encoder",
        )
    pipe.fuse_lora(components=adapted, lora_scale=scale, adapter_names=["boothkit_merge"])
    pipe.unload_lora_weights()
    # The LoRA's description, minus kohya's network keys (tools read those as "this file is a LoRA").
    metadata = {k: v for k, v in source.metadata.items() if k.startswith(("boothkit_", "modelspec.trigger"))}
    metadata.update(
        {
            "boothkit_family": family,
            "boothkit_base_model": str(base_model_dir),
            MERGED_KEY: str(source.path),
            "boothkit_merge_scale": str(scale),
            "modelspec.merged_from": f"{Path(base_model_dir).name}, {source.path.name}@{scale}",
        }
    )
    if single_file:
        written = save_single_file(pipe, output, metadata=metadata)
        if embeddings is not None:  # a checkpoint has no tokenizer: the token travels beside it
            _copy_embeddings(embeddings, embeddings_path(written), MERGED_KEY)
        return written

    def write(tmp: Path) -> None:
        pipe.save_pretrained(tmp, safe_serialization=True)
        (tmp / "boothkit.json").write_text(json.dumps(metadata, indent=2, sort_keys=True) + "\n")

    return atomic_write_dir(output, write)
