"""Flux.1 on a tiny model built from configs: the same promises as SD, and parity with the reference
training script's step (train_dreambooth_lora_flux.py)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from boothkit.errors import BoothkitError
from boothkit.families import LoadOptions, load_model
from boothkit.families.flux import latent_ids, pack_latents, unpack_latents
from boothkit.files import EMBEDDINGS_FILE, LORA_FILE, MODEL_DIR, SINGLE_FILE
from boothkit.losses import dreambooth_loss
from boothkit.train import train
from conftest import make_photos, run_cli, train_args, train_config


def _image(pipe, prompt: str = "a photo of sks dog", seed: int = 0) -> np.ndarray:
    pipe.set_progress_bar_config(disable=True)
    return pipe(
        prompt,
        height=32,
        width=32,
        num_inference_steps=4,
        guidance_scale=3.5,
        max_sequence_length=32,
        generator=torch.Generator().manual_seed(seed),
        output_type="np",
    ).images[0]


def _quiet(message: str) -> None:
    pass


# ----------------------------------------------------------------------------- parity with the reference step


def test_packing_and_ids_are_the_pipelines() -> None:
    latents = torch.randn(2, 4, 8, 6)
    packed = pack_latents(latents)
    assert packed.shape == (2, 4 * 3, 16)
    assert torch.equal(packed, FluxPipeline._pack_latents(latents, 2, 4, 8, 6))
    assert torch.equal(unpack_latents(packed, 8, 6), latents)
    ids = latent_ids(8, 6, "cpu", torch.float32)
    assert torch.equal(ids, FluxPipeline._prepare_latent_image_ids(2, 4, 3, "cpu", torch.float32))


def test_a_training_step_is_the_reference_scripts(tiny_model) -> None:
    """For the same latents, noise and draw: the noisy input, the transformer's inputs (packed
    latents, timestep / 1000, guidance, text and image ids) and the target are the script's."""
    model = load_model(str(tiny_model("flux1")))
    config = train_config(tiny_model("flux1"), Path("p"), Path("o"))
    objective = model.objective(config)
    reference_scheduler = FlowMatchEulerDiscreteScheduler.from_config(model.inference_scheduler.config)
    assert torch.equal(objective.sigmas, reference_scheduler.sigmas)  # type: ignore[attr-defined]

    latents = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    cond = model.encode_prompts(["a photo of sks dog", "a photo of a dog"])
    noised = objective.noised(latents, torch.Generator().manual_seed(5))
    ours = model.predict(noised.noisy, noised.timesteps, cond, model.time_ids((32, 32), (0, 0), (32, 32)))

    # The script: noise first, then u uniform; timesteps and sigmas from the scheduler at (u * N).long().
    g = torch.Generator().manual_seed(5)
    noise = torch.randn(latents.shape, generator=g)
    u = torch.rand((2,), generator=g)
    indices = (u * reference_scheduler.config.num_train_timesteps).long()
    timesteps = reference_scheduler.timesteps[indices]
    sigmas = reference_scheduler.sigmas[indices].view(-1, 1, 1, 1)
    noisy = (1.0 - sigmas) * latents + sigmas * noise
    assert torch.allclose(noised.noisy, noisy) and torch.equal(noised.target, noise - latents)
    with torch.no_grad():
        reference = model.transformer(
            hidden_states=FluxPipeline._pack_latents(noisy, 2, 4, 8, 8),
            timestep=timesteps / 1000,
            guidance=torch.tensor([3.5]).expand(2),
            pooled_projections=cond.pooled,
            encoder_hidden_states=cond.hidden_states,
            txt_ids=torch.zeros(cond.hidden_states.shape[1], 3),
            img_ids=FluxPipeline._prepare_latent_image_ids(2, 4, 4, "cpu", torch.float32),
            return_dict=False,
        )[0]
    assert torch.allclose(ours, FluxPipeline._unpack_latents(reference, 8, 8, 1), atol=1e-6)


def test_the_prior_loss_is_the_reference_scripts() -> None:
    """Instance and prior terms, each the mean of weight * squared error over its own samples, as the
    script's chunked computation."""
    g = torch.Generator().manual_seed(0)
    pred, target = torch.randn(4, 4, 8, 8, generator=g), torch.randn(4, 4, 8, 8, generator=g)
    weights = torch.rand(4, generator=g) + 0.5
    is_prior = torch.tensor([False, False, True, True])
    terms = dreambooth_loss(pred, target, is_prior, prior_weight=0.7, weights=weights)
    w = weights.view(-1, 1, 1, 1)

    def script(p, t, ww):
        return torch.mean((ww * (p - t) ** 2).reshape(t.shape[0], -1), 1).mean()

    instance, prior = script(pred[:2], target[:2], w[:2]), script(pred[2:], target[2:], w[2:])
    assert torch.allclose(terms.instance, instance) and terms.prior is not None
    assert torch.allclose(terms.prior, prior) and torch.allclose(terms.total, instance + 0.7 * prior)


# ----------------------------------------------------------------------------- the same promises as SD


def test_a_flux_lora_trains_only_the_lora_and_loads_into_diffusers(tiny_model, photos, tmp_path) -> None:
    path = tiny_model("flux1")
    model = load_model(str(path))
    base = {k: v.clone() for k, v in model.transformer.state_dict().items()}
    result = train(
        train_config(path, photos, tmp_path / "run", steps=3), model=model, progress=False, log=_quiet
    )

    trainable = {n for n, p in model.transformer.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    assert not any(p.requires_grad for e in model.text_encoders for p in e.parameters())
    adapted = {n.split(".lora_")[0] for n in trainable}
    assert any(n.endswith("attn.add_q_proj") for n in adapted) and any(
        n.endswith("ff.net.2") for n in adapted
    )
    from peft.tuners.lora import LoraLayer

    for name, module in model.transformer.named_modules():
        if isinstance(module, LoraLayer):
            assert torch.equal(module.base_layer.weight, base[name + ".weight"]), name

    pipe = FluxPipeline.from_pretrained(path)
    before = _image(pipe)
    pipe.load_lora_weights(str(result.output))
    saved = load_file(result.output / LORA_FILE)
    from peft.utils import get_peft_model_state_dict

    loaded = get_peft_model_state_dict(pipe.transformer, adapter_name=pipe.get_active_adapters()[0])
    assert len(loaded) == len(saved) and all(k.startswith("transformer.") for k in saved)
    assert np.abs(_image(pipe) - before).max() > 1e-4  # the LoRA changes what the pipeline draws
    meta = json.loads((result.output / "summary.json").read_text())
    assert meta["family"] == "flux1" and meta["prediction_type"] == "flow"


def test_a_flux_full_fine_tune_writes_a_pipeline_that_loads(tiny_model, photos, tmp_path) -> None:
    """... and, with --save-single-file, its transformer as BFL's single file, which loads back; one
    that trains the text encoder too is refused before training (the file would lose it)."""
    path = tiny_model("flux1-schnell")
    result = train(
        train_config(
            path, photos, tmp_path / "run", method="full", steps=2, prior=False, save_single_file=True
        ),
        progress=False,
        log=_quiet,
    )
    single = load_model(str(result.output / SINGLE_FILE), LoadOptions(model_config=str(path)))
    tuned_folder = load_model(str(result.output / MODEL_DIR))
    assert all(
        torch.equal(v, single.transformer.state_dict()[k])
        for k, v in tuned_folder.transformer.state_dict().items()
    )
    refused = train_config(
        path, photos, tmp_path / "te", method="full", save_single_file=True, train_text_encoder=True
    )
    with pytest.raises(BoothkitError, match="the trained text encoder would be left out"):
        train(refused, progress=False, log=_quiet)
    assert not (tmp_path / "te").exists()
    tuned = FluxPipeline.from_pretrained(result.output / MODEL_DIR)
    base = FluxPipeline.from_pretrained(path)
    changed = [
        n
        for n, p in tuned.transformer.state_dict().items()
        if not torch.equal(p, base.transformer.state_dict()[n])
    ]
    assert changed and all(
        torch.equal(a, b)
        for a, b in zip(tuned.vae.state_dict().values(), base.vae.state_dict().values(), strict=True)
    )


def test_a_killed_flux_run_resumes_to_the_same_weights(tiny_model, photos, tmp_path) -> None:
    path = tiny_model("flux1")
    settings = {"steps": 6, "checkpoint_every": 2, "grad_accum": 2}
    reference = train(
        train_config(path, photos, tmp_path / "ref", **settings), progress=False, log=_quiet
    ).output
    out = tmp_path / "run"
    env = {**os.environ, "BOOTHKIT_FAULT": "micro:3", "OMP_NUM_THREADS": str(torch.get_num_threads())}
    args = [sys.executable, "-m", "boothkit.cli", *train_args(path, photos, out, **settings), "--quiet"]
    proc = subprocess.run(args, env=env, capture_output=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    train(train_config(path, photos, out, **settings, resume=str(out)), progress=False, log=_quiet)
    a, b = load_file(reference / LORA_FILE), load_file(out / LORA_FILE)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_training_teaches_the_subject(tiny_model, tmp_path) -> None:
    """One photo, one prompt, a hundred steps: the tuned model draws that prompt closer to the photo
    than the base model does (a measured distance, not just "it changed"). Measured in the model's own
    latent space: the tiny VAE is random, so its decoded pixels say nothing."""
    path = tiny_model("flux1")
    photos = tmp_path / "photo"
    photos.mkdir()
    target = Image.new("RGB", (32, 32), (230, 40, 40))
    target.paste((20, 20, 220), (8, 8, 24, 24))
    target.save(photos / "subject.png")
    config = train_config(path, photos, tmp_path / "run", method="full", steps=100, lr=1e-3, prior=False)
    result = train(config, progress=False, log=_quiet)

    model = load_model(str(path))
    pixels = torch.from_numpy(np.asarray(target, dtype=np.float32) / 127.5 - 1).permute(2, 0, 1)[None]
    with torch.no_grad():
        expected = pack_latents(model.scale_latents(model.encode_images(pixels)[0]))

    def distance(pipe) -> float:
        pipe.set_progress_bar_config(disable=True)
        drawn = [
            pipe(
                "a photo of sks dog",
                height=32,
                width=32,
                num_inference_steps=8,
                max_sequence_length=32,
                generator=torch.Generator().manual_seed(seed),
                output_type="latent",
            ).images
            for seed in range(3)
        ]
        return float(torch.stack([(d - expected).pow(2).mean() for d in drawn]).mean())

    base = distance(FluxPipeline.from_pretrained(path))
    tuned = distance(FluxPipeline.from_pretrained(result.output / MODEL_DIR))
    assert tuned < 0.5 * base, (tuned, base)


# ----------------------------------------------------------------------------- bad input


def test_flux_bad_input_is_named(tiny_model, photos, tmp_path, capsys) -> None:
    flux, schnell = tiny_model("flux1"), tiny_model("flux1-schnell")
    out = tmp_path / "run"
    cases = [
        (train_args(flux, photos, out, snr_gamma=5.0), "--snr-gamma does not apply to Flux.1"),
        (train_args(flux, photos, out, noise_offset=0.05), "--noise-offset does not apply to Flux.1"),
        (train_args(schnell, photos, out, train_guidance=3.5), "--train-guidance does not apply to Flux.1"),
        (train_args(flux, photos, out, resolution=36), "--resolution must be a positive multiple of 8"),
        (
            [*train_args(flux, photos, out), "--prediction-type", "epsilon"],
            "--prediction-type does not apply",
        ),
    ]
    for args, phrase in cases:
        code, _, err = run_cli(capsys, *args)
        assert code == 2 and phrase in err and "Traceback" not in err, (phrase, err)
    assert not out.exists()


def test_fp16_is_refused_for_flux(tiny_model) -> None:
    """fp16 needs CUDA, so on a CPU the device check refuses it first; the family's own refusal is
    what a GPU user meets."""
    model = load_model(str(tiny_model("flux1")))
    with pytest.raises(BoothkitError, match="overflow in fp16") as info:
        model.objective(train_config(tiny_model("flux1"), Path("p"), Path("o"), mixed_precision="fp16"))
    assert "bf16" in (info.value.hint or "")


def test_a_flux_lora_on_another_family_names_both(tiny_model, photos, tmp_path, capsys) -> None:
    run = train(
        train_config(tiny_model("flux1"), photos, tmp_path / "run", steps=1), progress=False, log=_quiet
    ).output
    args = [
        "generate",
        "--model",
        str(tiny_model("sdxl")),
        "--lora",
        str(run),
        "--prompt",
        "a photo of sks dog",
    ]
    code, _, err = run_cli(capsys, *args, "--steps", "1", "--output", str(tmp_path / "g"))
    assert code == 2 and "trained for Flux.1 (flux1) but the base model is SDXL (sdxl)" in err


def test_generate_grid_and_morph_draw_with_a_flux_lora(tiny_model, photos, tmp_path, capsys) -> None:
    run = train(
        train_config(tiny_model("flux1"), photos, tmp_path / "run", steps=1), progress=False, log=_quiet
    ).output
    common = ["--model", str(tiny_model("flux1")), "--lora", str(run), "--steps", "2"]
    code, out, err = run_cli(
        capsys, "generate", *common, "--prompt", "a photo of sks dog", "--output", str(tmp_path / "g")
    )
    assert code == 0 and Path(out.strip()).is_file(), err
    grid = tmp_path / "grid.png"
    code, _, err = run_cli(
        capsys, "grid", "seeds", *common, "--prompt", "a sks dog", "--num-seeds", "2", "--output", str(grid)
    )
    assert code == 0 and grid.is_file(), err
    gif = tmp_path / "m.gif"
    code, _, err = run_cli(
        capsys,
        "morph",
        *common,
        "--prompt",
        "a sks dog",
        "--seeds",
        "1",
        "2",
        "--fps",
        "2",
        "--duration",
        "1.5",
        "--output",
        str(gif),
    )
    assert code == 0 and gif.is_file(), err


# ----------------------------------------------------------------------------- a learned token


def test_flux_textual_inversion_learns_a_token_in_clip_and_t5(tiny_model, photos, tmp_path) -> None:
    """Only the new rows of CLIP's and T5's embedding matrices train; the file holds diffusers'
    Flux layout ({"clip_l", "t5"}), which diffusers' own loader reads into both encoders, and
    boothkit's generate draws what that draws."""
    from boothkit.adapters import parse_adapter
    from boothkit.pipelines import open_pipeline

    path = tiny_model("flux1")
    model = load_model(str(path))
    before = [{k: v.clone() for k, v in e.state_dict().items()} for e in model.text_encoders]
    transformer = {k: v.clone() for k, v in model.transformer.state_dict().items()}
    config = train_config(path, photos, tmp_path / "run", method="ti", num_vectors=2, prior=False, ti_lr=5e-2)
    result = train(config, model=model, progress=False, log=_quiet)
    assert all(torch.equal(v, transformer[k]) for k, v in model.transformer.state_dict().items())
    for encoder, tokenizer, base in zip(model.text_encoders, model.tokenizers, before, strict=True):
        weight = encoder.get_input_embeddings().weight
        ids = tokenizer.convert_tokens_to_ids(["<sks>", "<sks>_1"])
        changed = {k for k, v in encoder.state_dict().items() if k not in base or not torch.equal(v, base[k])}
        assert changed and all(weight.data_ptr() == encoder.state_dict()[k].data_ptr() for k in changed)
        old = next(base[k] for k in changed)
        assert torch.equal(weight[: old.shape[0]].detach(), old)  # every original row as it was
        assert min(ids) >= old.shape[0]
    embeds = load_file(result.output / EMBEDDINGS_FILE)
    assert set(embeds) == {"clip_l", "t5"} and all(v.shape[0] == 2 for v in embeds.values())

    pipe = FluxPipeline.from_pretrained(path)
    words = _image(pipe, "a photo of dog dog dog")
    pipe.load_textual_inversion(
        embeds["clip_l"], token="<sks>", text_encoder=pipe.text_encoder, tokenizer=pipe.tokenizer
    )
    pipe.load_textual_inversion(
        embeds["t5"], token="<sks>", text_encoder=pipe.text_encoder_2, tokenizer=pipe.tokenizer_2
    )
    theirs = _image(pipe, "a photo of <sks> dog")
    ours = open_pipeline(str(path), [parse_adapter(str(result.output))])
    assert np.abs(_image(ours, "a photo of <sks> dog") - theirs).max() < 1e-5
    assert np.abs(theirs - words).max() > 1e-4


def test_flux_pivotal_tuning_exports_with_its_token(tiny_model, photos, tmp_path, capsys) -> None:
    from boothkit.adapters import parse_adapter
    from boothkit.pipelines import open_pipeline

    path = tiny_model("flux1")
    config = train_config(
        path, photos, tmp_path / "run", method="pivotal", ti_fraction=0.5, prior=False, lr=5e-2
    )
    run = train(config, progress=False, log=_quiet).output
    assert (run / LORA_FILE).is_file() and (run / EMBEDDINGS_FILE).is_file()
    prompt = "a photo of <sks> dog"
    tuned = _image(open_pipeline(str(path), [parse_adapter(str(run))]), prompt)
    assert np.abs(tuned - _image(open_pipeline(str(path), []), prompt)).max() > 1e-4

    kohya = tmp_path / "k.safetensors"
    code, _, err = run_cli(capsys, "export", str(run), "--format", "kohya", "--output", str(kohya))
    assert code == 0, err
    assert set(load_file(tmp_path / "k_emb.safetensors")) == {"clip_l", "t5"}
    merged = tmp_path / "merged"
    code, _, err = run_cli(capsys, "export", str(run), "--format", "merged", "--output", str(merged))
    assert code == 0, err
    pipe = FluxPipeline.from_pretrained(merged)
    assert "<sks>" in pipe.tokenizer.get_vocab() and "<sks>" in pipe.tokenizer_2.get_vocab()
    assert np.abs(_image(pipe, prompt) - tuned).max() < 1e-4


# ----------------------------------------------------------------------------- export


@pytest.fixture(scope="module")
def flux_run(tiny_model, tmp_path_factory) -> Path:
    """A Flux LoRA with the text encoder trained too, strong enough to change what is drawn."""
    root = tmp_path_factory.mktemp("flux_run")
    photos = make_photos(root / "photos")
    config = train_config(
        tiny_model("flux1"), photos, root / "run", steps=4, lr=5e-2, train_text_encoder=True
    )
    return train(config, progress=False, log=_quiet).output


def test_kohya_export_fuses_qkv_exactly_and_comes_back(tiny_model, flux_run, tmp_path, capsys) -> None:
    kohya = tmp_path / "k.safetensors"
    code, out, err = run_cli(capsys, "export", str(flux_run), "--format", "kohya", "--output", str(kohya))
    assert code == 0, err
    assert "transformer     max |source - output| = 0.00e+00" in out and "0 unmapped keys" in out
    keys = set(load_file(kohya))
    assert "lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight" in keys
    assert "lora_unet_single_blocks_0_linear1.lora_up.weight" in keys
    assert any(k.startswith("lora_te1_text_model_encoder_layers_0_self_attn_q_proj") for k in keys)
    assert not any(k.startswith("lora_unet_transformer") for k in keys)

    back = tmp_path / "back"
    code, _, err = run_cli(capsys, "export", str(kohya), "--format", "diffusers", "--output", str(back))
    assert code == 0, err
    pipe = FluxPipeline.from_pretrained(tiny_model("flux1"))
    base = _image(pipe)
    pipe.load_lora_weights(str(flux_run), adapter_name="source")
    source = _image(pipe)
    pipe.unload_lora_weights()
    pipe.load_lora_weights(str(back), adapter_name="back")
    assert np.abs(_image(pipe) - source).max() < 1e-5 < np.abs(source - base).max()


def test_diffusers_own_converter_reads_the_kohya_layout_at_full_size() -> None:
    """At Flux.1's real widths (3072 attention, 12288 MLP), diffusers' kohya reader turns the fused
    layers boothkit writes back into the same weight updates."""
    from diffusers.loaders.lora_conversion_utils import _convert_kohya_flux_lora_to_diffusers

    from boothkit import flux_lora

    g = torch.Generator().manual_seed(0)
    paths = [f"transformer_blocks.0.attn.{p}" for p in ("to_q", "to_k", "to_v", "add_q_proj", "add_v_proj")]
    paths += [f"single_transformer_blocks.0.attn.{p}" for p in ("to_q", "to_k", "to_v")]
    paths += ["single_transformer_blocks.0.proj_out", "transformer_blocks.0.ff.net.2"]
    widths = {
        "single_transformer_blocks.0.proj_out": (3072, 15360),
        "transformer_blocks.0.ff.net.2": (3072, 12288),
    }
    layers = {
        p: (
            torch.randn(2, widths.get(p, (3072, 3072))[1], generator=g),
            torch.randn(widths.get(p, (3072, 3072))[0], 2, generator=g),
            4.0,
        )
        for p in paths
    }
    kohya, unmapped = flux_lora.to_kohya(layers, flux_lora.FluxDims(3072, 12288))
    assert not unmapped
    theirs = _convert_kohya_flux_lora_to_diffusers(dict(kohya))
    for p, layer in layers.items():
        a, b = theirs[f"transformer.{p}.lora_A.weight"], theirs[f"transformer.{p}.lora_B.weight"]
        assert torch.allclose(b @ a, flux_lora.delta(layer), atol=1e-4), p


def test_a_merged_flux_draws_what_the_lora_draws(tiny_model, flux_run, tmp_path, capsys) -> None:
    merged = tmp_path / "merged"
    code, _, err = run_cli(capsys, "export", str(flux_run), "--format", "merged", "--output", str(merged))
    assert code == 0, err
    pipe = FluxPipeline.from_pretrained(tiny_model("flux1"))
    base = _image(pipe)
    pipe.load_lora_weights(str(flux_run))
    with_lora = _image(pipe)
    merged_image = _image(FluxPipeline.from_pretrained(merged))
    assert np.abs(merged_image - with_lora).max() < 1e-4 < np.abs(with_lora - base).max()


def test_a_merged_single_file_is_the_bfl_transformer_and_loads_back(
    tiny_model, flux_run, photos, tmp_path, capsys
) -> None:
    """--single-file writes the merged transformer under BFL's names (what ComfyUI's and Forge's
    diffusion-model loaders read); loaded back with the base's other components it draws what the
    LoRA draws. A LoRA that adapts the text encoder too is refused: the file has no place for it."""
    single = tmp_path / "m.safetensors"
    args = ("--format", "merged", "--single-file", "--output", str(single))
    code, _, err = run_cli(capsys, "export", str(flux_run), *args)
    assert code == 2 and "adapts the text encoder too" in err and not single.exists()
    config = train_config(tiny_model("flux1"), photos, tmp_path / "run", steps=4, lr=5e-2)
    run = train(config, progress=False, log=_quiet).output
    code, _, err = run_cli(capsys, "export", str(run), *args)
    assert code == 0, err
    with safe_open(str(single), "pt") as f:
        keys, meta = set(f.keys()), f.metadata()
    assert "double_blocks.0.img_attn.qkv.weight" in keys and "final_layer.adaLN_modulation.1.weight" in keys
    assert meta["modelspec.architecture"] == "flux-1-dev"
    pipe = FluxPipeline.from_pretrained(tiny_model("flux1"))
    base = _image(pipe)
    pipe.load_lora_weights(str(run))
    with_lora = _image(pipe)
    model = load_model(str(single), LoadOptions(model_config=str(tiny_model("flux1"))))
    assert model.name == "flux1" and model.source.single_file
    assert np.abs(_image(model.pipeline()) - with_lora).max() < 1e-4 < np.abs(with_lora - base).max()


def test_the_bfl_layout_is_diffusers_own_single_file_conversion() -> None:
    """At Flux.1's real widths (diffusers' converter assumes them), boothkit's reading of a BFL
    checkpoint equals diffusers', and writing it back gives the same tensors. One column per layer
    keeps it small: the conversion only moves rows."""
    from diffusers.loaders.single_file_utils import convert_flux_transformer_checkpoint_to_diffusers

    from boothkit.families import flux_layout

    rows = {
        "double_blocks.0.img_attn.qkv": 3 * 3072,
        "double_blocks.0.txt_attn.qkv": 3 * 3072,
        "single_blocks.0.linear1": 3 * 3072 + 12288,
    }
    g = torch.Generator().manual_seed(0)
    bfl: dict[str, torch.Tensor] = {}
    for layer in flux_layout.bfl_layers(1, 1) + ["final_layer.adaLN_modulation.1"]:
        n = rows.get(layer, 6)
        bfl[f"{layer}.weight"] = torch.randn(n, 1, generator=g)
        bfl[f"{layer}.bias"] = torch.randn(n, generator=g)
    for i, name in enumerate([*flux_layout.DOUBLE_NORMS, *flux_layout.SINGLE_NORMS]):
        block = "double_blocks.0." if i < len(flux_layout.DOUBLE_NORMS) else "single_blocks.0."
        bfl[block + name] = torch.randn(4, generator=g)
    theirs = convert_flux_transformer_checkpoint_to_diffusers({k: v.clone() for k, v in bfl.items()})
    ours, unmapped = flux_layout.from_bfl(
        {flux_layout.COMFY_PREFIX + k: v for k, v in bfl.items()}, flux_layout.FluxDims(3072, 12288)
    )
    assert not unmapped and set(ours) == set(theirs)
    assert all(torch.equal(ours[k], theirs[k]) for k in theirs)
    back, unmapped = flux_layout.to_bfl(ours)
    assert not unmapped and set(back) == set(bfl) and all(torch.equal(back[k], bfl[k]) for k in bfl)


def test_a_flux_single_file_needs_configs_that_fit(tiny_model, tmp_path) -> None:
    from boothkit.families import flux_layout

    folder = tiny_model("flux1")
    schnell = tmp_path / "schnell.safetensors"
    transformer = FluxPipeline.from_pretrained(tiny_model("flux1-schnell")).transformer
    tensors, _ = flux_layout.to_bfl(transformer.state_dict())
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(schnell))
    with pytest.raises(BoothkitError, match="one is guidance-distilled"):
        load_model(str(schnell), LoadOptions(model_config=str(folder)))
    with pytest.raises(BoothkitError, match="FLUX.1-schnell") as info:
        load_model(str(schnell))  # offline, and the hub's configs are not in the cache
    assert "--model-config" in (info.value.hint or "")
    loaded = load_model(str(schnell), LoadOptions(model_config=str(tiny_model("flux1-schnell"))))
    assert all(
        torch.equal(v, loaded.transformer.state_dict()[k]) for k, v in transformer.state_dict().items()
    )


def test_a_flux_layer_without_a_bfl_name_is_refused_for_kohya(tiny_model, photos, tmp_path, capsys) -> None:
    targets = ("attn.to_q", "norm_out.linear")
    run = train(
        train_config(tiny_model("flux1"), photos, tmp_path / "run", steps=1, target_modules=targets),
        progress=False,
        log=_quiet,
    ).output
    kohya = tmp_path / "k.safetensors"
    code, _, err = run_cli(capsys, "export", str(run), "--format", "kohya", "--output", str(kohya))
    assert code == 2 and "could not be mapped" in err and "norm_out.linear" in err
    assert not kohya.exists()
