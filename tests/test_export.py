"""LoRA export: kohya <-> diffusers conversions verified against diffusers' own loader, merging, metadata."""

from __future__ import annotations

import json
import re
import shutil
from importlib.metadata import version
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

import boothkit.export as export
from boothkit.errors import BoothkitError
from boothkit.export import (
    ExportReport,
    adapter_alphas,
    check_lora_matches,
    export_lora,
    from_kohya,
    load_lora_file,
    merge_lora,
    to_kohya,
    underscore_to_path,
    verify_conversion,
)
from boothkit.families import FamilyName, load_pipeline_folder
from boothkit.metadata import lora_metadata
from boothkit.tiny import build_tiny_pipeline

FAMILIES: tuple[FamilyName, ...] = ("sd1", "sd2", "sdxl")
UNET_TARGETS = ["to_k", "to_q", "to_v", "to_out.0"]
TE_TARGETS = ["q_proj", "k_proj", "v_proj", "out_proj"]


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Any:
    # The tiny models gain nothing from threads, and on a shared 2-core machine OpenMP workers
    # spin-waiting against other processes make these tests 5-10x slower.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def text_encoder_names(family: FamilyName) -> list[str]:
    return ["text_encoder", "text_encoder_2"] if family == "sdxl" else ["text_encoder"]


def make_lora(
    base: Path,
    family: FamilyName,
    out: Path,
    *,
    unet_alpha_pattern: dict[str, float] | None = None,
    unet_targets: list[str] = UNET_TARGETS,
    peft_keys: bool = False,
    seed: int = 0,
) -> Path:
    """A non-zero LoRA on the UNet and text encoder(s), saved with the pipeline's `save_lora_weights`.

    Ranks vary (rank_pattern) and alphas differ from the ranks and between components, so a
    conversion that loses either shows up as a different output. `peft_keys` keeps peft's key
    names (as boothkit's LoRA method saves) instead of `convert_state_dict_to_diffusers`' ones.
    """
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    pipe = load_pipeline_folder(base)
    torch.manual_seed(seed)
    unet_config = LoraConfig(
        r=4, lora_alpha=8, init_lora_weights="gaussian", target_modules=unet_targets,
        rank_pattern={"attn2.to_k": 2}, alpha_pattern=unet_alpha_pattern or {},
    )  # fmt: skip
    te_config = LoraConfig(
        r=4,
        lora_alpha=6,
        init_lora_weights="gaussian",
        target_modules=TE_TARGETS,
        rank_pattern={"out_proj": 2},
    )
    pipe.unet.add_adapter(unet_config)
    kwargs: dict[str, Any] = {}
    for name in text_encoder_names(family):
        getattr(pipe, name).add_adapter(te_config)
    with torch.no_grad():
        for model in [pipe.unet] + [getattr(pipe, n) for n in text_encoder_names(family)]:
            for param_name, param in model.named_parameters():
                if "lora_B" in param_name:
                    param.normal_(0.0, 0.3)

    def layers(model: torch.nn.Module) -> dict[str, torch.Tensor]:
        state = get_peft_model_state_dict(model)
        return state if peft_keys else convert_state_dict_to_diffusers(state)

    kwargs["unet_lora_layers"] = layers(pipe.unet)
    kwargs["unet_lora_adapter_metadata"] = unet_config.to_dict()
    for name in text_encoder_names(family):
        kwargs[f"{name}_lora_layers"] = layers(getattr(pipe, name))
        kwargs[f"{name}_lora_adapter_metadata"] = te_config.to_dict()
    type(pipe).save_lora_weights(out, safe_serialization=True, **kwargs)
    # Add boothkit's description, as the trainer does.
    path = out / export.LORA_FILE
    tensors = load_file(str(path))
    with safe_open(str(path), "pt") as f:
        meta = dict(f.metadata())
    meta.update(
        lora_metadata(
            base_model=str(base), family=family, rank=4, alpha=8, steps=10, resolution=32,
            token="sks", class_noun="dog", images_hash="0123abcd",
        )
    )  # fmt: skip
    save_file(tensors, str(path), metadata=meta)
    return out


@pytest.fixture(scope="module")
def bases(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("export_bases")
    return {family: build_tiny_pipeline(family, root / family) for family in FAMILIES}


@pytest.fixture(scope="module")
def runs(bases: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("export_runs")
    return {family: make_lora(bases[family], family, root / family) for family in FAMILIES}


@pytest.fixture(scope="module")
def kohya(
    bases: dict[str, Path], runs: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> dict[str, ExportReport]:
    """Each family's LoRA exported to kohya with verification against its base model."""
    root = tmp_path_factory.mktemp("export_kohya")
    return {
        family: export_lora(
            runs[family], format="kohya", output=root / f"{family}.safetensors", base_model_dir=bases[family]
        )
        for family in FAMILIES
    }


def _image(pipe: Any) -> np.ndarray:
    # Fresh copies of the LoRA weights: CPU kernels round differently for tensors at odd offsets
    # inside a loaded file's buffer, which would blur an exact comparison.
    for name in ("unet", "text_encoder", "text_encoder_2"):
        model = getattr(pipe, name, None)
        for param in model.parameters() if model is not None else ():
            param.data = param.data.clone()
    pipe.set_progress_bar_config(disable=True)
    out = pipe(
        "a photo of sks dog", num_inference_steps=2, height=32, width=32, output_type="np",
        generator=torch.Generator().manual_seed(0),
    )  # fmt: skip
    return np.asarray(out.images)


def _with_lora(base: Path, lora: Path) -> np.ndarray:
    pipe = load_pipeline_folder(base)
    pipe.load_lora_weights(str(lora.parent), weight_name=lora.name)
    return _image(pipe)


def _canonical(key: str) -> str:
    """The diffusers key in peft naming with `text_model.`, as `from_kohya` writes it."""
    key = re.sub(r"\.lora(?:_linear_layer)?\.down\.weight$", ".lora_A.weight", key)
    key = re.sub(r"\.lora(?:_linear_layer)?\.up\.weight$", ".lora_B.weight", key)
    component, _, rest = key.partition(".")
    if component != "unet" and not rest.startswith("text_model."):
        rest = "text_model." + rest
    return f"{component}.{rest}"


def _meta(path: Path) -> dict[str, str]:
    with safe_open(str(path), "pt") as f:
        return dict(f.metadata() or {})


# ----------------------------------------------------------------------------- conversions


@pytest.mark.parametrize("family", FAMILIES)
def test_kohya_round_trip_keeps_tensors_and_alphas(
    bases: dict[str, Path], runs: dict[str, Path], family: FamilyName
) -> None:
    lora = load_lora_file(runs[family])
    unet_config = dict(load_pipeline_folder(bases[family]).unet.config)
    alphas = adapter_alphas(lora.tensors, lora.metadata)
    ranks = {k: v.shape[0] for k, v in lora.tensors.items() if k.endswith("down.weight")}
    # Not the trivial case: ranks vary, and alphas differ from the ranks and between components.
    assert set(ranks.values()) == {2, 4}
    assert set(alphas.values()) == {6.0, 8.0}

    converted = to_kohya(lora.tensors, family=family, alphas=alphas, unet_config=unet_config)
    back, back_alphas = from_kohya(converted, family=family, unet_config=unet_config)

    expected = {_canonical(k): v for k, v in lora.tensors.items()}
    assert set(back) == set(expected)
    assert all(torch.equal(back[k], expected[k]) for k in expected)
    assert back_alphas == alphas
    again = to_kohya(back, family=family, alphas=back_alphas, unet_config=unet_config)
    assert set(again) == set(converted) and all(torch.equal(again[k], converted[k]) for k in converted)


@pytest.mark.parametrize("family", FAMILIES)
def test_kohya_keys_are_what_diffusers_converter_reads(
    bases: dict[str, Path], runs: dict[str, Path], family: FamilyName
) -> None:
    """diffusers' own kohya -> peft conversion (a separate implementation) must consume every key
    and land each tensor on the module boothkit's `from_kohya` names."""
    from diffusers.loaders.lora_conversion_utils import (
        _convert_non_diffusers_lora_to_diffusers,
        _maybe_map_sgm_blocks_to_diffusers,
    )
    from diffusers.utils import convert_state_dict_to_peft, convert_unet_state_dict_to_peft

    pipe = load_pipeline_folder(bases[family])
    lora = load_lora_file(runs[family])
    converted = to_kohya(
        lora.tensors,
        family=family,
        alphas=adapter_alphas(lora.tensors, lora.metadata),
        unet_config=dict(pipe.unet.config),
    )
    state = dict(converted)
    if family == "sdxl":  # the SDXL pipeline passes its UNet config, SD1/SD2's do not
        state = _maybe_map_sgm_blocks_to_diffusers(state, pipe.unet.config)
    theirs, their_alphas = _convert_non_diffusers_lora_to_diffusers(state)  # raises on any unconverted key
    theirs_peft = {}
    for component in ["unet", *text_encoder_names(family)]:
        part = {k.removeprefix(f"{component}."): v for k, v in theirs.items() if k.split(".")[0] == component}
        part = (
            convert_unet_state_dict_to_peft(part) if component == "unet" else convert_state_dict_to_peft(part)
        )
        theirs_peft.update({f"{component}.{k}": v for k, v in part.items()})
    ours, _ = from_kohya(converted, family=family, unet_config=dict(pipe.unet.config))
    assert set(theirs_peft) == set(ours)
    assert all(torch.equal(theirs_peft[k], ours[k]) for k in ours)
    assert len(their_alphas) == len(ours) // 2


def test_kohya_names_follow_sd_scripts(kohya: dict[str, ExportReport]) -> None:
    sd1 = load_file(str(kohya["sd1"].output))
    sdxl = load_file(str(kohya["sdxl"].output))
    assert "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_out_0.lora_down.weight" in sd1
    assert "lora_te_text_model_encoder_layers_0_self_attn_q_proj.alpha" in sd1
    # SDXL: sd-scripts' SGM block numbering, two text encoders.
    assert "lora_unet_input_blocks_3_1_transformer_blocks_0_attn2_to_k.lora_down.weight" in sdxl
    assert "lora_unet_middle_block_1_transformer_blocks_0_attn1_to_q.lora_up.weight" in sdxl
    assert "lora_unet_output_blocks_1_1_transformer_blocks_0_attn1_to_v.alpha" in sdxl
    assert "lora_te1_text_model_encoder_layers_2_self_attn_out_proj.lora_down.weight" in sdxl
    assert "lora_te2_text_model_encoder_layers_2_self_attn_out_proj.lora_down.weight" in sdxl
    assert not any(k.startswith(("lora_unet_down_blocks", "lora_unet_up_blocks", "lora_te_")) for k in sdxl)
    alpha = sd1["lora_te_text_model_encoder_layers_0_self_attn_q_proj.alpha"]
    assert alpha.dtype == torch.float32 and alpha.ndim == 0 and float(alpha) == 6.0


def test_sdxl_default_layout_gives_real_sdxl_names() -> None:
    # No config: the layout of SDXL base (2 layers per block), shared by every SDXL fine-tune.
    names = {
        "unet.down_blocks.2.attentions.1.transformer_blocks.9.attn2.to_k": "input_blocks_8_1_transformer_blocks_9_attn2_to_k",
        "unet.mid_block.attentions.0.transformer_blocks.3.attn1.to_out.0": "middle_block_1_transformer_blocks_3_attn1_to_out_0",
        "unet.up_blocks.1.attentions.2.proj_in": "output_blocks_5_1_proj_in",
        "unet.up_blocks.0.resnets.2.conv1": "output_blocks_2_0_in_layers_2",
        "unet.down_blocks.0.downsamplers.0.conv": "input_blocks_3_0_op",
    }
    state = {}
    for module in names:
        state[f"{module}.lora_A.weight"] = torch.zeros(2, 3)
        state[f"{module}.lora_B.weight"] = torch.zeros(3, 2)
    out = to_kohya(state, family="sdxl", alphas=1.0)
    assert {k.split(".")[0] for k in out} == {f"lora_unet_{v}" for v in names.values()}
    back, _ = from_kohya(out, family="sdxl")
    assert set(back) == set(state)


def test_kohya_names_split_back_into_module_paths() -> None:
    cases = {
        "down_blocks_0_attentions_1_transformer_blocks_0_ff_net_0_proj": "down_blocks.0.attentions.1.transformer_blocks.0.ff.net.0.proj",
        "up_blocks_3_resnets_2_time_emb_proj": "up_blocks.3.resnets.2.time_emb_proj",
        "mid_block_resnets_0_conv_shortcut": "mid_block.resnets.0.conv_shortcut",
        "input_blocks_4_0_emb_layers_1": "input_blocks.4.0.emb_layers.1",
        "output_blocks_8_0_skip_connection": "output_blocks.8.0.skip_connection",
        "time_embedding_linear_1": "time_embedding.linear_1",
        "conv_norm_out": "conv_norm_out",
        "text_model_encoder_layers_11_mlp_fc1": "text_model.encoder.layers.11.mlp.fc1",
        "text_model_encoder_layers_0_self_attn_out_proj": "text_model.encoder.layers.0.self_attn.out_proj",
    }
    for name, path in cases.items():
        assert underscore_to_path(name) == path


def test_unknown_keys_are_refused_not_dropped() -> None:
    with pytest.raises(
        BoothkitError, match="2 LoRA keys could not be mapped.*lora_unet_bogus_layer.lora_down"
    ):
        from_kohya(
            {
                "lora_unet_bogus_layer.lora_down.weight": torch.zeros(2, 3),
                "lora_unet_bogus_layer.lora_up.weight": torch.zeros(3, 2),
            },
            family="sd1",
        )
    with pytest.raises(BoothkitError, match="no alpha given"):
        to_kohya(
            {
                "unet.conv_in.lora_A.weight": torch.zeros(2, 3),
                "unet.conv_in.lora_B.weight": torch.zeros(3, 2),
            },
            family="sd1",
            alphas={},
        )


# ----------------------------------------------------------------------------- verified export


@pytest.mark.parametrize("family", FAMILIES)
def test_verified_export_both_ways(
    bases: dict[str, Path], kohya: dict[str, ExportReport], tmp_path: Path, family: FamilyName
) -> None:
    report = kohya[family]
    components = ["unet", *text_encoder_names(family)]
    assert report.verified and report.unmapped == []
    assert set(report.max_abs_diff) == set(components)
    assert max(report.max_abs_diff.values()) <= 1e-5
    assert min(report.lora_effect.values()) > 1e-2  # the LoRA really changes every component
    assert report.tensors == 3 * report.modules  # down, up, alpha per layer
    meta = _meta(report.output)
    assert export.ADAPTER_METADATA_KEY not in meta  # diffusers refuses kohya alphas + peft config together
    assert meta["boothkit_family"] == family and meta["boothkit_token"] == "sks"
    assert meta["ss_network_module"] == "networks.lora" and meta["ss_network_dim"] == "4"
    assert "ok" in report.format() and "MISMATCH" not in report.format()

    back = export_lora(
        report.output, format="diffusers", output=tmp_path / "run", base_model_dir=bases[family]
    )
    assert back.output == tmp_path / "run" / export.LORA_FILE
    assert back.verified and back.unmapped == [] and max(back.max_abs_diff.values()) <= 1e-5
    meta = _meta(back.output)
    assert meta["boothkit_images_hash"] == "0123abcd" and meta["modelspec.trigger_phrase"] == "sks dog"
    adapter = json.loads(meta[export.ADAPTER_METADATA_KEY])
    assert adapter["unet.lora_alpha"] == 8.0 and adapter["text_encoder.lora_alpha"] == 6.0
    assert set(adapter["unet.rank_pattern"].values()) == {2}


@pytest.mark.parametrize("family", FAMILIES)
def test_kohya_file_gives_the_same_image_in_diffusers(
    bases: dict[str, Path], runs: dict[str, Path], kohya: dict[str, ExportReport], family: FamilyName
) -> None:
    base_image = _image(load_pipeline_folder(bases[family]))
    diffusers_image = _with_lora(bases[family], runs[family] / export.LORA_FILE)
    kohya_image = _with_lora(bases[family], kohya[family].output)
    assert np.abs(diffusers_image - base_image).max() > 1e-2
    assert np.abs(kohya_image - diffusers_image).max() <= 1e-5


def test_per_module_alphas_survive(bases: dict[str, Path], tmp_path: Path) -> None:
    run = make_lora(bases["sd1"], "sd1", tmp_path / "run", unet_alpha_pattern={"attn1.to_v": 3}, seed=1)
    lora = load_lora_file(run)
    alphas = adapter_alphas(lora.tensors, lora.metadata)
    assert {a for k, a in alphas.items() if k.endswith("attn1.to_v")} == {3.0}
    assert {a for k, a in alphas.items() if k.startswith("unet.") and not k.endswith("attn1.to_v")} == {8.0}

    report = export_lora(run, format="kohya", output=tmp_path / "k.safetensors", base_model_dir=bases["sd1"])
    assert report.unmapped == [] and max(report.max_abs_diff.values()) <= 1e-5
    tensors = load_file(str(report.output))
    assert float(tensors["lora_unet_mid_block_attentions_0_transformer_blocks_0_attn1_to_v.alpha"]) == 3.0
    back = export_lora(
        report.output, format="diffusers", output=tmp_path / "d.safetensors", base_model_dir=bases["sd1"]
    )
    assert max(back.max_abs_diff.values()) <= 1e-5
    adapter = json.loads(_meta(back.output)[export.ADAPTER_METADATA_KEY])
    assert set(adapter["unet.alpha_pattern"].values()) == {3.0}


ALL_UNET_LAYERS = [
    *UNET_TARGETS, "proj_in", "proj_out", "ff.net.0.proj", "ff.net.2", "conv1", "conv2", "time_emb_proj",
    "conv_shortcut", "downsamplers.0.conv", "upsamplers.0.conv", "conv_in", "conv_out", "linear_1", "linear_2",
]  # fmt: skip


@pytest.mark.parametrize("family", ["sd1", "sdxl"])
def test_every_unet_layer_kind_maps(bases: dict[str, Path], tmp_path: Path, family: FamilyName) -> None:
    # LoCon-style LoRAs also adapt resnets, samplers and embeddings; in SDXL's SGM naming those get
    # the most renumbering (in_layers_2, emb_layers_1, op, out_2, label_emb_0_0, ...).
    run = make_lora(
        bases[family], family, tmp_path / "run", unet_targets=ALL_UNET_LAYERS, peft_keys=True, seed=2
    )
    report = export_lora(run, format="kohya", output=tmp_path / "k.safetensors", base_model_dir=bases[family])
    assert report.unmapped == [] and max(report.max_abs_diff.values()) <= 1e-5
    assert report.lora_effect["unet"] > 1e-2
    names = {k.split(".")[0] for k in load_file(str(report.output))}
    if family == "sdxl":
        for name in ("input_blocks_0_0", "input_blocks_1_0_in_layers_2", "input_blocks_2_0_op", "out_2",
                     "label_emb_0_0", "time_embed_2", "output_blocks_1_2_conv", "middle_block_2_emb_layers_1"):  # fmt: skip
            assert f"lora_unet_{name}" in names
    back = export_lora(report.output, format="diffusers", output=tmp_path / "d", base_model_dir=bases[family])
    assert back.unmapped == [] and max(back.max_abs_diff.values()) <= 1e-5


def _swap_attn1_qk(name: str) -> str:
    return (
        name.replace("attn1_to_q", "attn1_to_X")
        .replace("attn1_to_k", "attn1_to_q")
        .replace("attn1_to_X", "attn1_to_k")
    )


def test_verification_catches_a_wrong_mapping(
    bases: dict[str, Path],
    runs: dict[str, Path],
    kohya: dict[str, ExportReport],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Self-attention q and k swapped: same shapes, so only the outputs can tell.
    good = load_file(str(kohya["sd1"].output))
    save_file({_swap_attn1_qk(k): v for k, v in good.items()}, str(tmp_path / "swapped.safetensors"))
    pipe = load_pipeline_folder(bases["sd1"])
    source = runs["sd1"] / export.LORA_FILE
    diffs, _, missing = verify_conversion(pipe, source, tmp_path / "swapped.safetensors", [])
    assert diffs["unet"] > 1e-2 and missing == []
    # A file that lost layers is reported by name.
    save_file({k: v for k, v in good.items() if "mid_block" not in k}, str(tmp_path / "partial.safetensors"))
    _, _, missing = verify_conversion(pipe, source, tmp_path / "partial.safetensors", [])
    assert len(missing) == 8 and all("mid_block" in m for m in missing)

    # export_lora refuses to write a conversion that does not reproduce its source.
    real = export._kohya_name
    monkeypatch.setattr(export, "_kohya_name", lambda *args: _swap_attn1_qk(real(*args) or ""))
    with pytest.raises(BoothkitError, match="does not reproduce the source"):
        export_lora(
            runs["sd1"], format="kohya", output=tmp_path / "out.safetensors", base_model_dir=bases["sd1"]
        )
    assert not (tmp_path / "out.safetensors").exists()
    assert not list(tmp_path.glob(".out*"))


def test_export_without_base_model(runs: dict[str, Path], tmp_path: Path) -> None:
    report = export_lora(runs["sd2"], format="kohya", output=tmp_path)
    assert report.output == tmp_path / "sks_dog.safetensors"  # named after ss_output_name
    assert report.family == "sd2" and not report.verified
    assert "not verified" in report.format()
    assert _meta(report.output)["ss_v2"] == "True"
    with pytest.raises(BoothkitError, match="already a kohya LoRA"):
        export_lora(report.output, format="kohya", output=tmp_path / "again.safetensors")


# ----------------------------------------------------------------------------- merge


def _reload_single_file(path: Path, config: Path) -> Any:
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    if not (config / "text_encoder_2").exists():
        return StableDiffusionPipeline.from_single_file(str(path), config=str(config), local_files_only=True)
    # diffusers tells SDXL's text encoders apart by width (768 / 1280); the tiny's are both 32
    # wide, so convert the second with diffusers' own OpenCLIP converter (see test_single_file).
    from diffusers.loaders.single_file_utils import convert_open_clip_checkpoint
    from transformers import CLIPTextModelWithProjection

    te2 = CLIPTextModelWithProjection.from_pretrained(config / "text_encoder_2")
    te2.load_state_dict(
        convert_open_clip_checkpoint(te2, load_file(str(path)), prefix="conditioner.embedders.1.model.")
    )
    return StableDiffusionXLPipeline.from_single_file(
        str(path), config=str(config), local_files_only=True, text_encoder_2=te2
    )


@pytest.mark.parametrize("family", FAMILIES)
def test_merged_model_matches_base_plus_lora(
    bases: dict[str, Path], kohya: dict[str, ExportReport], tmp_path: Path, family: FamilyName
) -> None:
    lora = kohya[family].output  # merging reads either layout
    expected = _with_lora(bases[family], lora)
    effect = np.abs(expected - _image(load_pipeline_folder(bases[family])))
    assert effect.max() > 1e-2

    folder = merge_lora(bases[family], lora, output=tmp_path / "merged")
    # Merged weights round differently from base + LoRA applied on the fly, and CPU kernels round
    # differently with memory layout (see _image), so an SDXL pixel can move by a few 1e-3 from
    # run to run: the merged image must match on average and stay far inside the LoRA's effect.
    diff = np.abs(_image(load_pipeline_folder(folder)) - expected)
    assert diff.mean() <= 1e-3 and diff.max() <= 0.1 * effect.max(), (diff.max(), effect.max())
    info = json.loads((folder / "boothkit.json").read_text())
    assert info["boothkit_merged_lora"] == str(lora) and info["boothkit_token"] == "sks"

    single = merge_lora(bases[family], lora, output=tmp_path / "merged.safetensors", single_file=True)
    diff = np.abs(_image(_reload_single_file(single, bases[family])) - expected)
    assert diff.mean() <= 1e-3 and diff.max() <= 0.1 * effect.max(), (diff.max(), effect.max())  # as above
    meta = _meta(single)
    assert meta["boothkit_merge_scale"] == "1.0" and meta["boothkit_family"] == family
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_merge_scale_zero_is_the_base_model(
    bases: dict[str, Path], runs: dict[str, Path], tmp_path: Path
) -> None:
    folder = merge_lora(bases["sd1"], runs["sd1"], scale=0.0, output=tmp_path / "merged")
    assert (
        np.abs(_image(load_pipeline_folder(folder)) - _image(load_pipeline_folder(bases["sd1"]))).max()
        <= 1e-6
    )
    # Merging again replaces the folder in place.
    merge_lora(bases["sd1"], runs["sd1"], scale=1.0, output=folder)
    assert json.loads((folder / "boothkit.json").read_text())["boothkit_merge_scale"] == "1.0"


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # peft notes the layers it skipped
def test_merge_refuses_a_partly_applied_lora(bases: dict[str, Path], tmp_path: Path) -> None:
    # convert_state_dict_to_diffusers renames only attention layers, so with more targets the file
    # mixes two key styles; diffusers' loader then applies only some layers. Merging would silently
    # give another model; boothkit's converter reads all of them.
    run = make_lora(bases["sd1"], "sd1", tmp_path / "run", unet_targets=ALL_UNET_LAYERS, seed=3)
    with pytest.raises(BoothkitError, match="diffusers applied only 63 of the 95 layers"):
        merge_lora(bases["sd1"], run, output=tmp_path / "merged")
    converted = export_lora(run, format="kohya", output=tmp_path / "k.safetensors")
    assert converted.modules == 95 and converted.unmapped == []
    merged = merge_lora(bases["sd1"], converted.output, output=tmp_path / "merged")
    assert (
        np.abs(_image(load_pipeline_folder(merged)) - _image(load_pipeline_folder(bases["sd1"]))).max() > 1e-2
    )


# ----------------------------------------------------------------------------- refusals


def test_family_mismatch_names_both_sides(
    bases: dict[str, Path], runs: dict[str, Path], kohya: dict[str, ExportReport], tmp_path: Path
) -> None:
    with pytest.raises(
        BoothkitError, match=r"trained for sd1 \(cross-attention dim 32\) but the base model is sdxl \(80\)"
    ):
        merge_lora(bases["sdxl"], runs["sd1"], output=tmp_path / "merged")
    assert not (tmp_path / "merged").exists()
    with pytest.raises(BoothkitError, match="sd1.*sdxl"):
        export_lora(
            kohya["sd1"].output, format="diffusers", output=tmp_path / "x", base_model_dir=bases["sdxl"]
        )
    sdxl_pipe = load_pipeline_folder(bases["sdxl"])
    with pytest.raises(BoothkitError, match="sdxl.*sd1"):
        check_lora_matches(
            load_lora_file(runs["sdxl"]).tensors, load_pipeline_folder(bases["sd1"]), lora_family="sdxl"
        )
    check_lora_matches(load_lora_file(runs["sdxl"]).tensors, sdxl_pipe)  # the right base passes


def _digest(path: Path) -> dict[str, bytes]:
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    return {str(f): f.read_bytes() for f in files}


def test_export_never_replaces_its_inputs_or_what_it_did_not_write(
    bases: dict[str, Path], runs: dict[str, Path], tmp_path: Path
) -> None:
    """Exporting over the source LoRA, merging over the base model, writing inside the base model's
    folder, or over a file the user owns is refused with nothing changed; an earlier export of the
    same kind may be replaced (the merge test above does it)."""
    run = tmp_path / "run"
    shutil.copytree(runs["sd1"], run)
    base = tmp_path / "base"
    shutil.copytree(bases["sd1"], base)
    mine = tmp_path / "mine.safetensors"
    save_file({"x": torch.zeros(1)}, str(mine))
    before = {**_digest(run), **_digest(base), **_digest(mine)}
    cases = [
        (
            lambda: export_lora(run, format="kohya", output=run / "pytorch_lora_weights.safetensors"),
            "would replace",
        ),
        (lambda: export_lora(run, format="kohya", output=mine), "not an earlier export"),
        (
            lambda: export_lora(run, format="kohya", output=base / "k.safetensors", base_model_dir=base),
            "inside",
        ),
        (lambda: merge_lora(base, run, output=base), "would replace"),
        (lambda: merge_lora(base, run, output=base / "merged"), "inside"),
        (lambda: merge_lora(base, run, output=mine, single_file=True), "not an earlier export"),
    ]
    for call, phrase in cases:
        with pytest.raises(BoothkitError, match=phrase):
            call()
    assert {**_digest(run), **_digest(base), **_digest(mine)} == before
    first = export_lora(run, format="kohya", output=tmp_path / "k.safetensors")
    again = export_lora(run, format="kohya", output=tmp_path / "k.safetensors")  # its own output: replaced
    assert again.output == first.output and again.output.is_file()


def test_a_pivotal_runs_token_travels_with_its_exports(
    bases: dict[str, Path], runs: dict[str, Path], tmp_path: Path
) -> None:
    """A pivotal run's LoRA was trained with its learned token: a kohya export and a merged single file
    get the embeddings beside them (NAME_emb.safetensors), a merged diffusers folder gets the token in
    its tokenizer and text encoder."""
    run = tmp_path / "run"
    shutil.copytree(runs["sd1"], run)
    vector = torch.randn(1, load_pipeline_folder(bases["sd1"]).text_encoder.config.hidden_size)
    save_file({"<sks>": vector}, str(run / "learned_embeds.safetensors"), {"boothkit_placeholder": "<sks>"})

    report = export_lora(run, format="kohya", output=tmp_path / "k.safetensors")
    assert report.embeddings == tmp_path / "k_emb.safetensors"
    assert torch.equal(load_file(report.embeddings)["<sks>"], vector) and "k_emb" in report.format()

    single = merge_lora(bases["sd1"], run, output=tmp_path / "m.safetensors", single_file=True)
    assert torch.equal(load_file(single.with_name("m_emb.safetensors"))["<sks>"], vector)

    merged = load_pipeline_folder(merge_lora(bases["sd1"], run, output=tmp_path / "merged"))
    token_id = merged.tokenizer.convert_tokens_to_ids("<sks>")
    assert token_id != merged.tokenizer.unk_token_id
    assert torch.equal(merged.text_encoder.get_input_embeddings().weight[token_id], vector[0])


def test_runs_without_a_lora_are_explained(tmp_path: Path) -> None:
    ti, full = tmp_path / "ti", tmp_path / "full"
    ti.mkdir()
    save_file({"<sks>": torch.zeros(1, 32)}, str(ti / "learned_embeds.safetensors"))
    (full / "model").mkdir(parents=True)
    (full / "model" / "model_index.json").write_text("{}")
    with pytest.raises(BoothkitError, match="textual-inversion run: there is no LoRA to convert"):
        export_lora(ti, format="kohya", output=tmp_path / "x.safetensors")
    with pytest.raises(BoothkitError, match="full fine-tune: there is no LoRA") as info:
        export_lora(full, format="kohya", output=tmp_path / "x.safetensors")
    assert "--save-single-file" in (info.value.hint or "")
    assert not (tmp_path / "x.safetensors").exists()


def test_malformed_lora_files(bases: dict[str, Path], tmp_path: Path) -> None:
    random_bytes = tmp_path / "random.safetensors"
    random_bytes.write_bytes(np.random.default_rng(0).bytes(2048))
    truncated = tmp_path / "truncated.safetensors"
    save_file({"unet.conv_in.lora_A.weight": torch.zeros(64, 64)}, str(tmp_path / "whole.safetensors"))
    truncated.write_bytes((tmp_path / "whole.safetensors").read_bytes()[:200])
    for path in (random_bytes, truncated):
        with pytest.raises(BoothkitError, match="not a valid .safetensors") as info:
            export_lora(path, format="kohya", output=tmp_path / "out.safetensors")
        assert path.name in str(info.value)
    model = tmp_path / "model.safetensors"
    save_file({"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(2, 4, 3, 3)}, str(model))
    with pytest.raises(BoothkitError, match="neither a diffusers nor a kohya LoRA"):
        export_lora(model, format="kohya", output=tmp_path / "out.safetensors")
    with pytest.raises(BoothkitError, match="does not exist"):
        export_lora(tmp_path / "missing.safetensors", format="kohya", output=tmp_path / "o.safetensors")
    (tmp_path / "empty_run").mkdir()
    with pytest.raises(BoothkitError, match="holds no pytorch_lora_weights"):
        merge_lora(bases["sd1"], tmp_path / "empty_run", output=tmp_path / "m")


def test_lora_metadata_keys() -> None:
    meta = lora_metadata(
        base_model="/models/sd21", family="sd2", rank=8, alpha=4.0, steps=500, resolution=768,
        token="zwx", class_noun="person", images_hash="ff00", prediction_type="v_prediction", learning_rate=1e-4,
    )  # fmt: skip
    assert all(isinstance(v, str) for v in meta.values())
    assert meta["boothkit_version"] == version("boothkit")
    assert meta["boothkit_family"] == "sd2" and meta["boothkit_images_hash"] == "ff00"
    assert meta["ss_base_model_version"] == "sd_v2_v" and meta["ss_v2"] == "True"
    assert meta["ss_network_dim"] == "8" and meta["ss_network_alpha"] == "4.0"
    assert meta["ss_resolution"] == "(768, 768)" and meta["ss_max_train_steps"] == "500"
    assert meta["ss_output_name"] == "zwx_person" and meta["ss_sd_model_name"] == "sd21"
    assert meta["modelspec.architecture"] == "stable-diffusion-v2-768-v/lora"
    assert meta["modelspec.prediction_type"] == "v" and meta["modelspec.trigger_phrase"] == "zwx person"
    assert json.loads(meta["ss_tag_frequency"]) == {"boothkit": {"zwx person": 1}}
    xl = lora_metadata(base_model="sdxl", family="sdxl", rank=4, alpha=4, steps=1, resolution=1024)
    assert xl["ss_base_model_version"] == "sdxl_base_v1-0" and xl["ss_v2"] == "False"
    assert xl["modelspec.implementation"] == "https://github.com/Stability-AI/generative-models"
