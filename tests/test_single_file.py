"""Single-file (LDM/SGM layout) checkpoints: round trips through diffusers' own loader, detection."""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from boothkit.errors import BoothkitError, WriteError
from boothkit.families import FamilyName, load_pipeline_folder
from boothkit.families.single_file import (
    UNetLayout,
    detect_single_file_family,
    save_single_file,
    unet_path_from_ldm,
    unet_path_to_ldm,
    unet_to_ldm,
    vae_to_ldm,
)
from boothkit.tiny import build_tiny_pipeline

FAMILIES: tuple[FamilyName, ...] = ("sd1", "sd2", "sdxl")


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


def _wide_sdxl(tiny_sdxl: Path, out: Path) -> Path:
    """The tiny SDXL with a 48-wide second text encoder, like the real model's 768 / 1280.

    diffusers' single-file loader tells SDXL's two text encoders apart by their width; in the
    standard tiny SDXL both are 32 wide, so it would fill text_encoder_2 from the first encoder.
    """
    from diffusers import StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextModelWithProjection

    pipe = load_pipeline_folder(tiny_sdxl)
    torch.manual_seed(1)
    te2_config = pipe.text_encoder_2.config
    te2_config.hidden_size, te2_config.intermediate_size, te2_config.projection_dim = 48, 96, 40
    te2 = CLIPTextModelWithProjection(te2_config)
    unet = UNet2DConditionModel.from_config(
        pipe.unet.config,
        cross_attention_dim=32 + 48,
        projection_class_embeddings_input_dim=6 * pipe.unet.config.addition_time_embed_dim + 40,
    )
    components = {**pipe.components, "text_encoder_2": te2, "unet": unet}
    StableDiffusionXLPipeline(**components).save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("single_file_models")
    built: dict[str, Path] = {family: build_tiny_pipeline(family, root / family) for family in FAMILIES}
    built["sdxl-wide"] = _wide_sdxl(built["sdxl"], root / "sdxl-wide")
    return built


def _from_single_file(path: Path, config: Path, **kwargs: Any) -> Any:
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    sdxl = json.loads((config / "model_index.json").read_text())["_class_name"] == "StableDiffusionXLPipeline"
    cls = StableDiffusionXLPipeline if sdxl else StableDiffusionPipeline
    return cls.from_single_file(str(path), config=str(config), local_files_only=True, **kwargs)


def _image(pipe: Any) -> np.ndarray:
    # Weights in fresh memory: CPU kernels round differently for tensors at odd offsets inside a
    # mmapped file, which would blur an exact comparison.
    for component in ("unet", "vae", "text_encoder", "text_encoder_2"):
        model = getattr(pipe, component, None)
        for param in model.parameters() if model is not None else ():
            param.data = param.data.clone()
    pipe.set_progress_bar_config(disable=True)
    out = pipe(
        "a photo of sks dog", num_inference_steps=2, height=32, width=32, output_type="np",
        generator=torch.Generator().manual_seed(0),
    )  # fmt: skip
    return np.asarray(out.images)


def _assert_same_weights(a: torch.nn.Module, b: torch.nn.Module, name: str) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert set(sa) == set(sb), name
    different = [k for k in sa if not torch.equal(sa[k], sb[k])]
    assert not different, f"{name}: {len(different)} tensors differ, e.g. {different[:3]}"


@pytest.mark.parametrize("name", ["sd1", "sd2", "sdxl-wide"])
def test_round_trip_through_diffusers_loader(models: dict[str, Path], tmp_path: Path, name: str) -> None:
    src = models[name]
    original = load_pipeline_folder(src)
    path = save_single_file(src, tmp_path / "model.safetensors", metadata={"note": "hello"})

    assert detect_single_file_family(path) == name.split("-")[0]
    loaded = _from_single_file(path, src)
    for component in ("unet", "vae", "text_encoder", "text_encoder_2"):
        if getattr(original, component, None) is not None:
            _assert_same_weights(getattr(original, component), getattr(loaded, component), component)
    assert np.array_equal(_image(original), _image(loaded))
    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
    assert meta["note"] == "hello"
    assert meta["boothkit_family"] == name.split("-")[0]
    assert meta["modelspec.architecture"].startswith("stable-diffusion-")
    assert not list(tmp_path.glob(".*"))  # no temporary file left behind


def test_tiny_sdxl_second_encoder_via_diffusers_converter(models: dict[str, Path], tmp_path: Path) -> None:
    # With both tiny encoders 32 wide, diffusers' pipeline loader cannot tell them apart (see
    # _wide_sdxl); its own OpenCLIP converter still reads text_encoder_2 back exactly.
    from diffusers.loaders.single_file_utils import convert_open_clip_checkpoint
    from transformers import CLIPTextModelWithProjection

    src = models["sdxl"]
    original = load_pipeline_folder(src)
    path = save_single_file(original, tmp_path / "sdxl.safetensors")
    checkpoint = load_file(str(path))
    te2 = CLIPTextModelWithProjection.from_pretrained(src / "text_encoder_2")
    te2.load_state_dict(
        convert_open_clip_checkpoint(te2, checkpoint, prefix="conditioner.embedders.1.model.")
    )
    loaded = _from_single_file(path, src, text_encoder_2=te2)
    for component in ("unet", "vae", "text_encoder", "text_encoder_2"):
        _assert_same_weights(getattr(original, component), getattr(loaded, component), component)
    assert np.array_equal(_image(original), _image(loaded))


def test_keys_and_shapes_follow_the_original_layout(models: dict[str, Path], tmp_path: Path) -> None:
    shapes = {}
    for family in FAMILIES:
        path = save_single_file(models[family], tmp_path / f"{family}.safetensors")
        with safe_open(str(path), "pt") as f:
            shapes[family] = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}  # noqa: SIM118
    sd1, sd2, sdxl = shapes["sd1"], shapes["sd2"], shapes["sdxl"]
    assert sd1["model.diffusion_model.input_blocks.0.0.weight"] == (32, 4, 3, 3)
    assert sd1["model.diffusion_model.input_blocks.1.1.proj_in.weight"] == (32, 32, 1, 1)  # conv in SD1
    assert "model.diffusion_model.output_blocks.3.1.transformer_blocks.0.attn2.to_k.weight" in sd1
    assert "model.diffusion_model.output_blocks.1.1.conv.weight" in sd1  # upsampler after a plain block
    assert sd1["first_stage_model.decoder.mid.attn_1.q.weight"] == (32, 32, 1, 1)  # 1x1 conv, as LDM
    assert "cond_stage_model.transformer.text_model.embeddings.token_embedding.weight" in sd1
    assert sd2["model.diffusion_model.input_blocks.1.1.proj_in.weight"] == (32, 32)  # linear in SD2
    assert sd2["cond_stage_model.model.transformer.resblocks.0.attn.in_proj_weight"] == (96, 32)
    assert "cond_stage_model.model.positional_embedding" in sd2
    assert "model.diffusion_model.label_emb.0.0.weight" in sdxl
    assert "model.diffusion_model.output_blocks.1.2.conv.weight" in sdxl  # upsampler after attention
    assert "conditioner.embedders.0.transformer.text_model.final_layer_norm.weight" in sdxl
    assert sdxl["conditioner.embedders.1.model.text_projection"] == (48, 40)
    for family_shapes in shapes.values():
        assert not any(".lora" in k or "position_ids" in k for k in family_shapes)


FULL_SIZE_UNETS: dict[str, dict[str, Any]] = {
    "sd15": {
        "block_out_channels": (320, 640, 1280, 1280),
        "down_block_types": ("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        "up_block_types": ("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        "cross_attention_dim": 768,
        "attention_head_dim": 8,
    },
    "sdxl": {
        "block_out_channels": (320, 640, 1280),
        "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        "up_block_types": ("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        "transformer_layers_per_block": (1, 2, 10),
        "cross_attention_dim": 2048,
        "attention_head_dim": (5, 10, 20),
        "use_linear_projection": True,
        "addition_embed_type": "text_time",
        "addition_time_embed_dim": 256,
        "projection_class_embeddings_input_dim": 2816,
    },
}


@pytest.mark.parametrize("name", sorted(FULL_SIZE_UNETS))
def test_full_size_unet_layout_matches_diffusers_loader(name: str) -> None:
    # The real architectures, built on the meta device (no memory, no download): the mapping comes
    # from the config, so it must hold for 2 layers per block and 4 levels as well as for the tiny.
    from diffusers import UNet2DConditionModel
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint

    with torch.device("meta"):
        unet = UNet2DConditionModel(layers_per_block=2, **FULL_SIZE_UNETS[name])
    state = unet.state_dict()
    ldm = unet_to_ldm(state, unet.config)
    assert len(ldm) == {"sd15": 686, "sdxl": 1680}[name]  # the key counts of the released checkpoints
    known = {
        "sd15": "output_blocks.11.0.skip_connection.weight",
        "sdxl": "input_blocks.8.1.transformer_blocks.9.attn2.to_k.weight",
    }[name]
    assert known in ldm
    back = convert_ldm_unet_checkpoint(
        {f"model.diffusion_model.{k}": v for k, v in ldm.items()}, dict(unet.config)
    )
    assert set(back) == set(state)
    assert all(back[k].shape == state[k].shape for k in state)


def test_full_size_vae_layout_matches_diffusers_loader() -> None:
    from diffusers import AutoencoderKL
    from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

    with torch.device("meta"):
        vae = AutoencoderKL(
            block_out_channels=(128, 256, 512, 512), layers_per_block=2,
            down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
        )  # fmt: skip
    state = vae.state_dict()
    ldm = vae_to_ldm(state, vae.config)
    assert len(ldm) == 248 and "decoder.up.1.block.0.nin_shortcut.weight" in ldm
    back = convert_ldm_vae_checkpoint({f"first_stage_model.{k}": v for k, v in ldm.items()}, dict(vae.config))
    assert set(back) == set(state)


def test_unet_paths_invert() -> None:
    layout = UNetLayout(2, (False, True, True), (True, True, False))
    for path in [
        "conv_in", "time_embedding.linear_2", "add_embedding.linear_1", "down_blocks.0.resnets.1.conv1",
        "down_blocks.1.downsamplers.0.conv", "down_blocks.2.attentions.1.proj_in", "mid_block.resnets.1.time_emb_proj",
        "mid_block.attentions.0.transformer_blocks.0.attn1.to_q", "up_blocks.0.upsamplers.0.conv",
        "up_blocks.2.resnets.2.conv_shortcut", "up_blocks.1.attentions.2.transformer_blocks.1.ff.net.2", "conv_out",
    ]:  # fmt: skip
        ldm = unet_path_to_ldm(path, layout)
        assert ldm is not None and unet_path_from_ldm(ldm, layout) == path, (path, ldm)
    assert unet_path_to_ldm("down_blocks.1.downsamplers.0.conv", layout) == "input_blocks.6.0.op"
    assert unet_path_to_ldm("up_blocks.1.upsamplers.0.conv", layout) == "output_blocks.5.2.conv"
    assert unet_path_to_ldm("up_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q", layout) == (
        "output_blocks.3.1.transformer_blocks.0.attn1.to_q"
    )
    assert unet_path_to_ldm("not_a_block.0", layout) is None


def test_dtype_and_atomic_replace(
    models: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "half.safetensors"
    save_single_file(models["sd1"], out, dtype=torch.float16)
    tensors = load_file(str(out))
    assert {v.dtype for v in tensors.values()} == {torch.float16}
    before = out.read_bytes()

    import safetensors.torch

    def crash(*args: Any, **kwargs: Any) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(safetensors.torch, "save_file", crash)
    with pytest.raises(WriteError, match="disk full"):  # said, not a traceback
        save_single_file(models["sd1"], out)
    assert out.read_bytes() == before  # the old checkpoint survives a failed write
    assert [p.name for p in tmp_path.iterdir()] == [out.name]


def _write(path: Path, tensors: dict[str, torch.Tensor]) -> Path:
    save_file(tensors, str(path))
    return path


def test_detects_family_from_header_alone(tmp_path: Path) -> None:
    conv = {"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(8, 4, 3, 3)}
    sd1 = {**conv, "cond_stage_model.transformer.text_model.final_layer_norm.weight": torch.zeros(4)}
    sd2 = {**conv, "cond_stage_model.model.ln_final.weight": torch.zeros(4)}
    sd2_unet_only = {**conv, "model.diffusion_model.input_blocks.1.1.proj_in.weight": torch.zeros(8, 8)}
    sdxl = {**conv, "conditioner.embedders.1.model.ln_final.weight": torch.zeros(4)}
    for name, tensors, family in [
        ("a", sd1, "sd1"), ("b", sd2, "sd2"), ("c", sd2_unet_only, "sd2"), ("d", sdxl, "sdxl"),
    ]:  # fmt: skip
        assert detect_single_file_family(_write(tmp_path / f"{name}.safetensors", tensors)) == family


@pytest.mark.parametrize(
    ("tensors", "message"),
    [
        (
            {"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(8, 9, 3, 3)},
            "inpainting model.*9 input",
        ),
        ({"lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": torch.zeros(2, 4)}, "is a LoRA"),
        (
            {"down_blocks.0.resnets.0.conv1.weight": torch.zeros(2, 4)},
            "no Stable Diffusion UNet.*down_blocks",
        ),
        (
            {
                "model.diffusion_model.input_blocks.0.0.weight": torch.zeros(8, 4, 3, 3),
                "conditioner.embedders.0.model.ln_final.weight": torch.zeros(4),
            },
            "refiner",
        ),
    ],
)
def test_refuses_what_it_cannot_use(tmp_path: Path, tensors: dict[str, torch.Tensor], message: str) -> None:
    path = _write(tmp_path / "x.safetensors", tensors)
    with pytest.raises(BoothkitError, match=message) as info:
        detect_single_file_family(path)
    assert str(path) in str(info.value)


def test_malformed_headers_are_boothkit_errors(models: dict[str, Path], tmp_path: Path) -> None:
    good = save_single_file(models["sd1"], tmp_path / "good.safetensors")
    data = good.read_bytes()
    cases = {
        "random.safetensors": np.random.default_rng(0).bytes(4096),
        "truncated.safetensors": data[: len(data) // 2],
        "short.safetensors": b"\x01\x02",
        "huge-header.safetensors": struct.pack("<Q", 1 << 40) + b"{}",
        "not-json.safetensors": struct.pack("<Q", 8) + b"notjson!",
        "empty.safetensors": b"",
    }
    for name, payload in cases.items():
        path = tmp_path / name
        path.write_bytes(payload)
        with pytest.raises(BoothkitError, match="not a valid .safetensors") as info:
            detect_single_file_family(path)
        assert name in str(info.value)
    with pytest.raises(BoothkitError, match="does not exist"):
        detect_single_file_family(tmp_path / "missing.safetensors")


def test_generate_and_grid_read_a_single_files_configs_from_model_config(
    models: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Offline, a single-file checkpoint's configs can't come from the hub: the message says to pass
    --model-config, and generate / grid take it as train does."""
    from boothkit.cli import main as cli_main

    path = save_single_file(models["sd1"], tmp_path / "m.safetensors")
    args = ["--model", str(path), "--steps", "2", "--width", "32", "--height", "32", "--quiet"]
    code = cli_main(["generate", *args, "--prompt", "a dog", "--output", str(tmp_path / "g")])
    err = capsys.readouterr().err
    assert code == 2 and "single-file SD 1.x checkpoint" in err and "--model-config" in err
    assert "Traceback" not in err
    args += ["--model-config", str(models["sd1"])]
    assert cli_main(["generate", *args, "--prompt", "a dog", "--output", str(tmp_path / "g")]) == 0
    assert len(list((tmp_path / "g").glob("*.png"))) == 1
    grid = tmp_path / "seeds.png"
    assert (
        cli_main(["grid", "seeds", *args, "--prompt", "a dog", "--num-seeds", "2", "--output", str(grid)])
        == 0
    )
    assert grid.is_file()
