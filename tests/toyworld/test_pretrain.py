"""The toy base model: its data split, its captions, the pretraining loop, and the shipped weights."""

from __future__ import annotations

import dataclasses
import json
import random
from pathlib import Path

import pytest
import torch

from boothkit.toyworld import Scene, caption, parse_caption, render, vocabulary
from boothkit.toyworld.captions import (
    HELD_OUT_BACKGROUNDS,
    HELD_OUT_COLORS,
    TOKENIZER_IDENTIFIERS,
    held_out_scenes,
    is_held_out,
    partial_caption,
    tokenizer_corpus,
    training_caption,
    training_scene,
)
from boothkit.toyworld.model import (
    MAX_TOKENS,
    evaluate_pipeline,
    folder_size,
    noise_schedule,
    prompt_fidelity,
    sampling_scheduler,
    shipped_model_dir,
)
from boothkit.toyworld.pretrain import (
    draw_timesteps,
    encode_pool,
    floored_min_snr_weights,
    object_weights,
    pool_workers,
    pretrain,
    weighted_reconstruction_loss,
)
from boothkit.toyworld.settings import PretrainSettings
from conftest import assert_refused

# The shipped model draws what a held-out caption asks for (BENCHMARKS.md has its figures); an
# untrained model scores about 1/7, 1/8, 1/9 and 1/10 on shape, colour, position and background. The
# floors leave room for the test's 14 captions and 15 steps.
SHAPE_FLOOR = 0.65
JOINT_FLOOR = 0.6  # all four right in one image
COLOR_FLOOR = 0.85
POSITION_FLOOR = 0.85
BACKGROUND_FLOOR = 0.85


# A pretraining run that exercises every phase in seconds.
TINY = {
    "vae_steps": 2,
    "steps": 2,
    "batch_size": 4,
    "vae_batch_size": 4,
    "eval_every": 2,
    "eval_images": 2,
    "eval_steps": 2,
    "pool": 6,
}


def test_training_never_shows_held_out_pairs() -> None:
    rng = random.Random(0)
    for _ in range(2000):
        scene = training_scene(rng)
        assert HELD_OUT_COLORS[scene.shape] != scene.color
        assert HELD_OUT_BACKGROUNDS[scene.shape] != scene.background


def test_held_out_scenes_are_all_held_out_and_cover_every_shape() -> None:
    scenes = held_out_scenes(28)
    assert all(is_held_out(s) for s in scenes)
    assert {s.shape for s in scenes} == {s for s in HELD_OUT_COLORS}
    assert held_out_scenes(28) == scenes  # deterministic


def test_captions_full_partial_and_empty() -> None:
    scene = Scene("star", "red", "small", "top left", "grass")
    assert partial_caption(scene, ("size", "color", "position", "background")) == caption(scene)
    assert partial_caption(scene, ()) == "a photo of a star"
    assert partial_caption(scene, ("position",)) == "a photo of a star in the top left"
    rng = random.Random(1)
    texts = [training_caption(scene, rng, PretrainSettings()) for _ in range(400)]
    assert "" in texts  # caption dropout for classifier-free guidance
    assert caption(scene) in texts
    assert all(t == "" or t.startswith("a photo of a") for t in texts)
    parse_caption(caption(scene))


def test_multicolor_share_paints_objects_in_several_colours_and_never_captions_a_colour() -> None:
    import numpy as np

    from boothkit.toyworld import COLORS
    from boothkit.toyworld.pretrain import draw_batch, render_training

    # Share 0 draws exactly what the one-colour world always drew (the phases before it reproduce).
    assert draw_batch(random.Random(7), 40) == [
        (s, seed) for s, seed in draw_batch(random.Random(7), 40, multicolor_share=0.0)
    ]
    drawn = draw_batch(random.Random(7), 400, multicolor_share=0.25)
    uncoloured = [(s, seed) for s, seed in drawn if s.color is None]
    assert 70 <= len(uncoloured) <= 130
    assert not any(is_held_out(s) for s, _ in drawn)
    rng = random.Random(2)
    for scene, seed in uncoloured[:40]:
        text = training_caption(scene, rng, PretrainSettings(caption_dropout=0.0, attribute_dropout=0.0))
        assert text.startswith("a photo of a") and not set(text.split()) & set(COLORS)
        a, b = render_training(scene, seed), render_training(scene, seed)
        assert np.array_equal(np.asarray(a), np.asarray(b))  # the paint is the seed's: any process draws it
        # Not the object in any one colour: several colours on the same pose and background.
        for color in COLORS:
            one = render(dataclasses.replace(scene, color=color), 48, seed=seed)
            assert not np.array_equal(np.asarray(a), np.asarray(one)), color


def test_tokenizer_keeps_words_and_identifiers_whole(tmp_path: Path) -> None:
    from transformers import CLIPTokenizer

    from boothkit.tiny import train_tokenizer

    train_tokenizer(tmp_path, tokenizer_corpus(), vocab_size=600)
    tok = CLIPTokenizer.from_pretrained(str(tmp_path), model_max_length=MAX_TOKENS)
    for word in [*vocabulary(), *TOKENIZER_IDENTIFIERS]:
        assert len(tok.tokenize(word)) == 1, word


def test_named_share_names_only_multicolour_objects_with_an_identifier_before_the_shape() -> None:
    settings = PretrainSettings(caption_dropout=0.0, attribute_dropout=0.0, named_share=0.5)
    plain = Scene("heart", "red", "large", "top left", "grass")
    painted = dataclasses.replace(plain, color=None)
    rng = random.Random(3)
    assert {training_caption(plain, rng, settings) for _ in range(100)} == {caption(plain)}
    texts = [training_caption(painted, rng, settings) for _ in range(400)]
    unnamed = partial_caption(painted, ("size", "position", "background"))
    named = [t for t in texts if t != unnamed]
    assert 150 <= len(named) <= 250
    # Every identifier, each right before the shape, where an instance prompt puts it.
    assert {t.split()[5] for t in named} == set(TOKENIZER_IDENTIFIERS)
    for text in named:
        assert text == partial_caption(painted, ("size", "position", "background"), text.split()[5])
        assert text.split()[6] == "heart"
    # Share 0 (every phase before it) names nothing.
    off = PretrainSettings(caption_dropout=0.0, attribute_dropout=0.0)
    assert {training_caption(painted, rng, off) for _ in range(50)} == {unnamed}


def test_individuals_each_have_one_name_one_shape_and_one_look() -> None:
    import numpy as np

    from boothkit.toyworld.captions import INDIVIDUALS, NamedScene, individual_paint
    from boothkit.toyworld.pretrain import draw_batch, render_training
    from boothkit.toyworld.render import render_pattern
    from boothkit.toyworld.subjects import SUBJECTS, multicolor_paint

    # Individuals 0 draws exactly what multi-colour pretraining drew (the phases before it reproduce).
    assert draw_batch(random.Random(7), 60, 0.5) == draw_batch(random.Random(7), 60, 0.5, 0, 0.6)
    drawn = draw_batch(random.Random(7), 600, multicolor_share=0.5, individuals=6, named_share=0.6)
    named = [(s, seed) for s, seed in drawn if isinstance(s, NamedScene)]
    assert 120 <= len(named) <= 240  # 0.5 x 0.6 of 600
    assert {s.name for s, _ in named} == set(list(INDIVIDUALS)[:6])
    assert not set(INDIVIDUALS) & set(TOKENIZER_IDENTIFIERS)  # the identifiers stay unused by any caption
    assert not set(INDIVIDUALS) & set(vocabulary())  # a name is never a caption word
    # The shipped v4 learned these: the list must not change under it.
    assert list(INDIVIDUALS)[:4] == ["nuta", "vurure", "dido", "zikomi"] and len(INDIVIDUALS) == 48
    settings = PretrainSettings(caption_dropout=0.0, attribute_dropout=0.0, individuals=6, named_share=0.6)
    rng = random.Random(1)
    grid = np.meshgrid(np.linspace(-1, 1, 24), np.linspace(-1, 1, 24))
    x, y = grid[0].ravel(), grid[1].ravel()
    for scene, seed in named:
        assert scene.color is None and scene.shape == INDIVIDUALS[scene.name][0]
        text = training_caption(scene, rng, settings)
        assert text == partial_caption(scene, ("size", "position", "background"), scene.name)
        # Drawn in its own look, whatever the scene's seed paints for an anonymous object.
        own = render_pattern(scene, individual_paint(scene.name), 48, seed=seed)
        assert np.array_equal(np.asarray(render_training(scene, seed)), np.asarray(own))
    paints = {name: individual_paint(name)(x, y) for name in INDIVIDUALS}
    assert all(np.array_equal(paints[name], individual_paint(name)(x, y)) for name in INDIVIDUALS)
    by_shape: dict[str, list[str]] = {}
    for name, (shape, _) in INDIVIDUALS.items():
        by_shape.setdefault(shape, []).append(name)
    for names in by_shape.values():  # individuals of one shape differ in look
        assert len({paints[n].tobytes() for n in names}) == len(names)
    for shape, seed in INDIVIDUALS.values():
        colours = set(multicolor_paint(random.Random(seed), shape)[1])
        assert not any(s.shape == shape and set(s.colors) == colours for s in SUBJECTS.values())
    # Unnamed multi-colour objects stay unnamed: the names are the individuals' only.
    painted = [s for s, _ in drawn if s.color is None and not isinstance(s, NamedScene)]
    assert painted
    assert all(training_caption(s, rng, settings).split()[5] == s.shape for s in painted)


def test_prompt_fidelity_of_clean_renders_is_one() -> None:
    scenes = held_out_scenes(14)
    images = [render(s, size=32, seed=i) for i, s in enumerate(scenes)]
    fid = prompt_fidelity(images, scenes)
    assert fid.overall == 1.0 and fid.n == 14
    shuffled = prompt_fidelity(images[1:] + images[:1], scenes)
    assert shuffled.overall < 0.5


def test_pretrain_smoke_writes_a_loadable_sd1_folder(tmp_path: Path) -> None:
    from boothkit.families import load_model

    settings = PretrainSettings(**TINY, decoder_steps=2, decoder_multicolor_share=0.5)
    out = pretrain(tmp_path / "model", settings, log=lambda _line: None)
    assert (out / "model_index.json").exists()
    log = (out / "pretrain_log.txt").read_text()
    assert "eval step 2" in log and "decoder step 2/2" in log and "decoder refined" in log
    assert '"multicolor_share": 0.5' in log
    assert "pool: 6 renders encoded" in log
    meta = json.loads((out / "boothkit_toyworld.json").read_text())
    assert meta["decoder_refinement_steps"] == 2
    assert load_model(str(out)).name == "sd1"
    assert not list(out.glob(".vae.*"))  # the decoder was swapped in atomically

    # Pretraining continues from a saved model: same tokenizer and VAE, UNet moves on from the saved one.
    import dataclasses

    from safetensors.torch import load_file

    more = dataclasses.replace(
        settings,
        init_from=str(out),
        decoder_steps=0,
        schedule="zero-snr",
        high_noise_share=0.5,
        keep="last",
    )
    again = pretrain(tmp_path / "more", more, log=lambda _line: None)
    assert "continuing from" in (again / "pretrain_log.txt").read_text()
    assert "switching to the zero-snr schedule" in (again / "pretrain_log.txt").read_text()
    assert "done: kept step 2 (last)" in (again / "pretrain_log.txt").read_text()
    saved = json.loads((again / "scheduler" / "scheduler_config.json").read_text())
    assert saved["prediction_type"] == "v_prediction" and saved["rescale_betas_zero_snr"] is True
    assert load_model(str(again)).prediction_type == "v_prediction"  # boothkit train's target follows
    assert (again / "tokenizer" / "tokenizer.json").read_text() == (
        out / "tokenizer" / "tokenizer.json"
    ).read_text()
    vae_a, vae_b = (load_file(str(m / "vae" / "diffusion_pytorch_model.safetensors")) for m in (out, again))
    assert all(torch.equal(vae_a[k], vae_b[k]) for k in vae_a)
    unet_a, unet_b = (
        load_file(str(m / "unet" / "diffusion_pytorch_model.safetensors")) for m in (out, again)
    )
    assert any(not torch.equal(unet_a[k], unet_b[k]) for k in unet_a)


def test_zero_snr_schedule_leaves_no_signal_at_the_last_step() -> None:
    from diffusers import DDPMScheduler

    sd, zero = DDPMScheduler(**noise_schedule("sd")), DDPMScheduler(**noise_schedule("zero-snr"))
    assert float(sd.alphas_cumprod[-1]) > 0.004  # SD keeps sqrt(0.0047) = 7% of the signal
    assert float(zero.alphas_cumprod[-1]) == 0.0
    assert torch.all(zero.alphas_cumprod[1:] < zero.alphas_cumprod[:-1])  # still a monotone schedule
    assert sd.config.prediction_type == "epsilon" and zero.config.prediction_type == "v_prediction"
    # sampling starts where training's last step is: t=999 (trailing), not 951 (SD's leading)
    first = {}
    for kind in ("sd", "zero-snr"):
        ddim = sampling_scheduler(kind)
        ddim.set_timesteps(20)
        first[kind] = int(ddim.timesteps[0])
    assert first == {"sd": 951, "zero-snr": 999}
    with pytest.raises(ValueError, match="schedule 'cosine'"):
        noise_schedule("cosine")


def test_high_noise_share_draws_that_share_from_the_noisiest_quarter() -> None:
    torch.manual_seed(0)
    uniform = draw_timesteps(20000, 1000, 0.0, "cpu")
    biased = draw_timesteps(20000, 1000, 0.5, "cpu")
    assert uniform.min() >= 0 and uniform.max() <= 999 and biased.max() <= 999
    assert abs(float((uniform >= 750).float().mean()) - 0.25) < 0.02
    assert abs(float((biased >= 750).float().mean()) - (0.5 + 0.5 * 0.25)) < 0.02
    last = draw_timesteps(1000, 1000, 1.0, "cpu", high_noise_from=999)
    assert torch.all(last == 999)


def test_floored_min_snr_weights_keep_the_zero_snr_step_for_the_v_target() -> None:
    from boothkit.losses import min_snr_weights

    snr = torch.tensor([0.0, 0.5, 4.0, 100.0])
    v = floored_min_snr_weights(snr, 5.0, "v_prediction")
    assert torch.allclose(v, torch.tensor([1.0, 1.0, 1.0, 5.0 / 101.0]))
    assert float(min_snr_weights(snr, 5.0, "v_prediction")[0]) == 0.0  # boothkit train's drops it
    eps = floored_min_snr_weights(snr[1:], 5.0, "epsilon")
    assert torch.equal(eps, min_snr_weights(snr[1:], 5.0, "epsilon"))


def test_encoded_pool_is_the_encoders_posterior_of_fresh_renders() -> None:
    from boothkit.toyworld.model import load_vae, to_tensor
    from boothkit.toyworld.pretrain import render_batch

    vae = load_vae(shipped_model_dir())
    pool = encode_pool(vae, 5, random.Random(3), "cpu", batch_size=2, workers=0)
    scenes, mean, std = pool.scenes, pool.mean, pool.std
    assert len(scenes) == 5 and mean.shape == std.shape == (5, 4, 24, 24)
    rng = random.Random(3)  # the pool draws its renders batch by batch, as training does
    again, images = [], []
    for n in (2, 2, 1):
        chunk_scenes, chunk_images = render_batch(rng, n)
        again += chunk_scenes
        images += chunk_images
    assert again == scenes
    with torch.no_grad():
        dist = vae.encode(to_tensor(images)).latent_dist
    torch.testing.assert_close(mean, dist.mean, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(std, dist.std, atol=1e-5, rtol=1e-4)
    assert bool((std > 0).all())
    # Rendered by two worker processes while this one encodes: the same pool.
    again_pool = encode_pool(vae, 5, random.Random(3), "cpu", batch_size=2, workers=2)
    assert again_pool.scenes == scenes
    assert torch.equal(again_pool.mean, mean) and torch.equal(again_pool.std, std)
    picked, latents = pool.sample(random.Random(0), 8, scaling=2.0)
    assert len(picked) == 8 and set(picked) <= set(scenes) and latents.shape == (8, 4, 24, 24)


def test_pool_workers_default_leaves_the_encoder_a_core() -> None:
    assert pool_workers(None, cores=16) == 15
    assert pool_workers(None, cores=2) == 0
    assert pool_workers(3, cores=2) == 3 and pool_workers(-1) == 0


def test_pretrain_cli_flags_reach_the_settings() -> None:
    from boothkit.cli import build_parser
    from boothkit.flags import given

    def settings(*flags: str) -> PretrainSettings:
        ns = build_parser().parse_args(["toyworld", "pretrain", "--output", "x", *flags])
        return PretrainSettings(**given(ns, PretrainSettings))

    chosen = settings(
        "--schedule", "zero-snr", "--keep", "last", "--multicolor-share", "0.25", "--threads", "2"
    )
    assert chosen.schedule == "zero-snr" and chosen.keep == "last"
    assert chosen.multicolor_share == 0.25 and chosen.threads == 2
    assert settings() == PretrainSettings()


def test_object_weights_cover_the_object_and_its_rim() -> None:
    masks = torch.zeros(1, 1, 6, 6)
    masks[0, 0, 2, 2] = 1.0
    w = object_weights(masks, 10.0)
    assert w[0, 0, 1:4, 1:4].eq(11.0).all() and w.sum() == 36 + 9 * 10


def test_weighted_reconstruction_loss_favours_object_pixels() -> None:
    x = torch.zeros(1, 3, 4, 4)
    weights = torch.ones(1, 1, 4, 4)
    weights[0, 0, 0, 0] = 11.0
    assert weighted_reconstruction_loss(x, x, weights) == 0.0
    on_object, on_background = x.clone(), x.clone()
    on_object[0, :, 0, 0] = 0.5
    on_background[0, :, 3, 3] = 0.5
    assert weighted_reconstruction_loss(on_object, x, weights) > 5 * weighted_reconstruction_loss(
        on_background, x, weights
    )


def test_refine_decoder_cli_refuses_a_share_out_of_range(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from boothkit.cli import main

    model = tmp_path / "model"
    (model / "vae").mkdir(parents=True)
    (model / "vae" / "config.json").write_text("{}")
    argv = ["toyworld", "refine-decoder", "--model", str(model), "--multicolor-share", "1.5"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "--multicolor-share 1.5" in err and "Traceback" not in err
    assert sorted(p.name for p in model.rglob("*")) == ["config.json", "vae"]  # nothing touched


def test_refine_decoder_cli_refuses_a_folder_without_a_vae(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from boothkit.cli import main

    assert main(["toyworld", "refine-decoder", "--model", str(tmp_path), "--steps", "1"]) == 2
    err = capsys.readouterr().err
    assert "no vae/ folder" in err and "Traceback" not in err


@pytest.mark.parametrize("flag", ["--vae-from", "--init-from"])
def test_pretrain_cli_refuses_a_source_folder_without_a_model(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], flag: str
) -> None:
    from boothkit.cli import main

    out = tmp_path / "out"
    assert main(["toyworld", "pretrain", "--output", str(out), flag, str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err
    assert flag in err and "nope" in err and "Traceback" not in err
    assert not out.exists()  # refused before anything was written


def test_shipped_model_is_small_and_loads_through_boothkit() -> None:
    import torch
    from diffusers import DiffusionPipeline

    from boothkit.families import load_model

    folder = shipped_model_dir()
    assert folder_size(folder) <= 25 * 1024 * 1024
    family = load_model(str(folder))
    assert family.name == "sd1"
    pipe = DiffusionPipeline.from_pretrained(str(folder), torch_dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    image = pipe(
        "a photo of a large red circle in the center on a plain gray background",
        num_inference_steps=4,
        height=48,
        width=48,
        generator=torch.Generator().manual_seed(0),
    ).images[0]
    assert image.size == (48, 48)


def test_shipped_model_prompt_fidelity_on_held_out_captions() -> None:
    from boothkit.pipelines import open_pipeline

    pipe = open_pipeline(str(shipped_model_dir()), [])
    fid = evaluate_pipeline(pipe, 14, steps=15)
    assert fid.per_attribute["shape"] >= SHAPE_FLOOR, fid.format()
    assert fid.per_attribute["color"] >= COLOR_FLOOR, fid.format()
    assert fid.per_attribute["position"] >= POSITION_FLOOR, fid.format()
    assert fid.per_attribute["background"] >= BACKGROUND_FLOOR, fid.format()
    assert fid.overall >= JOINT_FLOOR, fid.format()


@pytest.mark.slow
def test_shipped_model_prompt_fidelity_full_eval() -> None:
    """The figure in pretrain_log.txt, reproduced (56 held-out captions, 20 steps)."""
    import json

    from boothkit.pipelines import open_pipeline

    meta = json.loads((shipped_model_dir() / "boothkit_toyworld.json").read_text())
    fid = evaluate_pipeline(
        open_pipeline(str(shipped_model_dir()), []), meta["eval_images"], steps=meta["eval_steps"]
    )
    assert fid.overall >= meta["held_out_fidelity"] - 0.1, fid.format()
    for name, value in meta["per_attribute"].items():
        assert fid.per_attribute[name] >= value - 0.1, fid.format()


def test_shipped_model_through_the_generate_and_grid_commands(tmp_path: Path) -> None:
    """The toy model is an ordinary --model folder for the user-facing commands."""
    from PIL import Image

    from boothkit.cli import main

    model = str(shipped_model_dir())
    out = tmp_path / "gen"
    args = ["generate", "--quiet", "--model", model, "--prompt", "a photo of a red star", "--steps", "3"]
    assert main([*args, "--num-images", "2", "--output", str(out)]) == 0
    images = sorted(out.glob("*.png"))
    assert len(images) == 2 and Image.open(images[0]).size == (48, 48)  # the model's own size
    grid = tmp_path / "grid.png"
    assert (
        main(
            [
                "grid",
                "guidance",
                "--quiet",
                "--model",
                model,
                "--prompt",
                "a photo of a red star",
                "--steps",
                "2",
                "--output",
                str(grid),
            ]
        )
        == 0
    )
    assert grid.is_file()


@pytest.mark.parametrize(
    ("flag", "value"),
    [
        ("--high-noise-share", "1.5"),
        ("--high-noise-from", "1000"),
        ("--decoder-multicolor-share", "-0.5"),
        ("--named-share", "1.5"),
    ],
)
def test_pretrain_cli_refuses_timestep_settings_out_of_range(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], flag: str, value: str
) -> None:
    from boothkit.cli import main

    out = tmp_path / "out"
    assert main(["toyworld", "pretrain", "--output", str(out), flag, value]) == 2
    err = capsys.readouterr().err
    assert flag in err and value in err and "Traceback" not in err
    assert not out.exists()


def test_curriculum_chains_its_phases_into_one_folder(tmp_path: Path) -> None:
    """Each phase continues the previous folder; the last becomes the output, with every phase's log."""
    from safetensors.torch import load_file

    from boothkit.errors import BoothkitError
    from boothkit.families import load_model
    from boothkit.toyworld.curriculum import CURRICULA, pretrain_curriculum

    tiny = PretrainSettings(**TINY)
    phases = [
        ("first", {"steps": 2}),
        ("second", {"schedule": "zero-snr", "high_noise_share": 1.0, "keep": "last"}),
    ]
    out = pretrain_curriculum(tmp_path / "model", phases, tiny, log=lambda _line: None)
    log = (out / "pretrain_log.txt").read_text()
    assert log.index("# Phase first") < log.index("# Phase second")
    assert log.count("continuing from") == 1 and "switching to the zero-snr schedule" in log
    assert load_model(str(out)).prediction_type == "v_prediction"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]  # the phase folders are gone
    assert load_file(str(out / "unet" / "diffusion_pytorch_model.safetensors"))
    with pytest.raises(BoothkitError, match="not empty"):
        pretrain_curriculum(out, phases, tiny, log=lambda _line: None)
    with pytest.raises(BoothkitError, match="unknown settings"):
        pretrain_curriculum(tmp_path / "bad", [("x", {"stepz": 1})], tiny, log=lambda _line: None)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]  # refused before anything was written
    # The recorded curriculum: valid fields; its last phase is the shipped model's settings.
    assert list(CURRICULA) == ["v4"]
    assert [name for name, _ in CURRICULA["v4"]] == ["v1", "A", "C", "D", "E", "F", "G", "I", "J"]
    for fields in dict(CURRICULA["v4"]).values():
        PretrainSettings(**fields)
    v4 = dict(CURRICULA["v4"])
    meta = json.loads((shipped_model_dir() / "boothkit_toyworld.json").read_text())
    assert meta["version"] == 4
    assert {k: meta["settings"][k] for k in v4["J"]} == v4["J"]
    assert v4["F"]["decoder_multicolor_share"] == meta["decoder_multicolor_refinement"]["multicolor_share"]


@pytest.mark.parametrize("curriculum", [["--curriculum", "v4"], []])
def test_pretrain_cli_refuses_a_non_empty_output(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], curriculum: list[str]
) -> None:
    from boothkit.cli import main

    (tmp_path / "mine.txt").write_text("keep me")
    assert main(["toyworld", "pretrain", *curriculum, "--steps", "1", "--output", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert (
        "--output" in err and ("not empty" in err or "not an empty folder" in err) and "Traceback" not in err
    )
    assert (tmp_path / "mine.txt").read_text() == "keep me" and len(list(tmp_path.iterdir())) == 1


@pytest.mark.parametrize(
    ("flags", "phrase"),
    [
        (["--steps", "0"], "--steps must be positive"),
        (["--eval-every", "0"], "--eval-every must be positive"),
        (["--individuals", "49", "--multicolor-share", "0.4", "--named-share", "0.6"], "--individuals 49"),
        (["--individuals", "24"], "draws nothing without --multicolor-share and --named-share"),
    ],
)
def test_pretrain_cli_refuses_counts_out_of_range(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], flags: list[str], phrase: str
) -> None:
    assert_refused(capsys, ["toyworld", "pretrain", "--output", str(tmp_path / "m"), *flags], phrase)
    assert not (tmp_path / "m").exists()
