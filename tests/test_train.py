"""End-to-end DreamBooth-LoRA runs on the tiny models (CPU, seconds each)."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from boothkit.config import TrainConfig
from boothkit.errors import BoothkitError
from boothkit.families import load_model
from boothkit.outputs import encode_sample_prompts, sample_images
from boothkit.train import train
from conftest import fast_settings, make_photos


def _config(model: Path, photos: Path, out: Path, **kw) -> TrainConfig:
    return TrainConfig(
        model=str(model), images=str(photos), output=str(out), class_noun="dog", **fast_settings(**kw)
    )  # type: ignore[arg-type]


def _image(pipe, prompt: str = "a photo of sks dog"):
    return pipe(
        prompt,
        num_inference_steps=2,
        height=32,
        width=32,
        output_type="np",
        generator=torch.Generator().manual_seed(0),
    ).images


@pytest.mark.parametrize("family", ["sd1", "sd2", "sdxl"])
def test_lora_run_trains_only_lora_and_the_file_loads_into_diffusers(
    family, tiny_model, photos, tmp_path
) -> None:
    path = tiny_model(family)
    model = load_model(str(path))
    base = {k: v.clone() for k, v in model.unet.state_dict().items()}
    result = train(_config(path, photos, tmp_path / "run"), model=model, progress=False, log=lambda s: None)

    # Only LoRA parameters require grad, and they changed from their initial values.
    trainable = {n for n, p in model.unet.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    assert not any(p.requires_grad for e in model.text_encoders for p in e.parameters())
    # Base weights are bit-identical after training.
    from peft.tuners.lora import LoraLayer

    for name, module in model.unet.named_modules():
        if isinstance(module, LoraLayer):
            key = name + ".weight"
            assert torch.equal(module.base_layer.weight, base[key]), key

    run = result.output
    for f in (
        "pytorch_lora_weights.safetensors",
        "config.toml",
        "summary.json",
        "loss.png",
        "logs/train.jsonl",
        "boothkit_run.json",
    ):
        assert (run / f).is_file(), f
    assert list((run / "samples").glob("step-*.png"))
    assert len((run / "logs" / "train.jsonl").read_text().splitlines()) == 4

    # The saved LoRA loads into a fresh diffusers pipeline with no missing or unexpected keys ...
    from diffusers import DiffusionPipeline
    from peft.utils import get_peft_model_state_dict

    pipe = DiffusionPipeline.from_pretrained(path)
    pipe.set_progress_bar_config(disable=True)
    before = _image(pipe)
    pipe.load_lora_weights(str(run))
    saved = load_file(run / "pytorch_lora_weights.safetensors")
    loaded = get_peft_model_state_dict(pipe.unet, adapter_name=pipe.get_active_adapters()[0])
    saved_unet = {k.removeprefix("unet."): v for k, v in saved.items()}
    assert len(loaded) == len(saved_unet)
    for k, v in loaded.items():
        assert torch.equal(v, saved_unet[k]), k
    # ... and changes its output.
    after = _image(pipe)
    assert abs(after - before).max() > 1e-3


def test_seeded_run_is_deterministic(tiny_model, photos, tmp_path) -> None:
    path = tiny_model("sd1")
    a = train(_config(path, photos, tmp_path / "a", flip=True), progress=False, log=lambda s: None)
    b = train(_config(path, photos, tmp_path / "b", flip=True), progress=False, log=lambda s: None)
    wa, wb = load_file(a.weights[0]), load_file(b.weights[0])
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    c = train(_config(path, photos, tmp_path / "c", seed=1), progress=False, log=lambda s: None)
    wc = load_file(c.weights[0])
    assert any(not torch.equal(wa[k], wc[k]) for k in wa)


def test_latents_are_encoded_once_per_image_not_per_step(tiny_model, photos, tmp_path) -> None:
    path = tiny_model("sd1")
    model = load_model(str(path))
    calls = []
    original = model.vae.encode

    def counting(x, *a, **k):
        calls.append(x.shape[0])
        return original(x, *a, **k)

    model.vae.encode = counting
    train(
        _config(path, photos, tmp_path / "run", steps=6, flip=True),
        model=model,
        progress=False,
        log=lambda s: None,
    )
    # 4 instance photos (+ their mirror images) and 2 class images, once each, whatever the step count.
    assert sum(calls) == 4 * 2 + 2


def test_text_encoder_lora_and_no_prior(tiny_model, photos, tmp_path) -> None:
    path = tiny_model("sdxl")
    model = load_model(str(path))
    cfg = TrainConfig(
        model=str(path),
        images=str(photos),
        output=str(tmp_path / "r"),
        prior=False,
        **fast_settings(train_text_encoder=True, grad_accum=2, snr_gamma=5.0, noise_offset=0.05),
    )  # type: ignore[arg-type]
    result = train(cfg, model=model, progress=False, log=lambda s: None)
    keys = load_file(result.weights[0]).keys()
    assert any(k.startswith("text_encoder.") for k in keys)
    assert any(k.startswith("text_encoder_2.") for k in keys)
    summary = json.loads((result.output / "summary.json").read_text())
    assert summary["class_images"] == 0


def test_text_encoder_lora_on_its_mlps_trains_loads_and_exports(tiny_model, photos, tmp_path) -> None:
    """--text-encoder-targets with fc1 fc2 (kohya's choice): the MLP adapters train, reload through
    diffusers, change what it draws, and survive the kohya export."""
    from diffusers import DiffusionPipeline
    from safetensors.torch import save_file

    from boothkit.export import export_lora

    path = tiny_model("sd1")
    targets = ("q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2")
    cfg = _config(
        path, photos, tmp_path / "r", prior=False, train_text_encoder=True, text_encoder_targets=targets
    )
    result = train(cfg, progress=False, log=lambda s: None)
    saved = load_file(result.weights[0])
    mlp = {k: v for k, v in saved.items() if k.startswith("text_encoder.") and ".mlp.fc" in k}
    assert {k.split(".mlp.")[1].split(".")[0] for k in mlp} == {"fc1", "fc2"}
    assert any(k.endswith("lora_B.weight") and v.abs().max() > 0 for k, v in mlp.items())  # B starts at 0

    def image(weights: Path) -> object:
        pipe = DiffusionPipeline.from_pretrained(path)
        pipe.set_progress_bar_config(disable=True)
        pipe.load_lora_weights(str(weights))
        return _image(pipe)

    without = tmp_path / "without_mlp.safetensors"
    save_file({k: v for k, v in saved.items() if k not in mlp}, str(without))
    assert abs(image(result.weights[0]) - image(without)).max() > 1e-4

    # Exported for kohya/A1111/ComfyUI and back, each way verified on the outputs with nothing unmapped.
    kohya = export_lora(result.output, format="kohya", output=tmp_path / "k.safetensors", base_model_dir=path)
    assert kohya.unmapped == [] and max(kohya.max_abs_diff.values()) <= 1e-5
    keys = list(load_file(str(kohya.output)))
    assert any(k.startswith("lora_te_") and "_mlp_fc1." in k for k in keys)
    assert any(k.startswith("lora_te_") and "_mlp_fc2." in k for k in keys)
    back = export_lora(kohya.output, format="diffusers", output=tmp_path / "d", base_model_dir=path)
    assert back.unmapped == [] and max(back.max_abs_diff.values()) <= 1e-5


def test_token_embedding_lora_loads_into_diffusers_and_export_says_why_it_cannot_convert(
    tiny_model, photos, tmp_path, capsys
) -> None:
    """peft's LoRA on the token embedding (a low-rank update of every row, the identifier's
    included): diffusers applies it; the kohya layout cannot hold it, and export says so."""
    from diffusers import DiffusionPipeline
    from safetensors.torch import save_file

    from boothkit.cli import main

    path = tiny_model("sd1")
    targets = ("q_proj", "v_proj", "token_embedding")
    cfg = _config(
        path, photos, tmp_path / "r", prior=False, train_text_encoder=True, text_encoder_targets=targets
    )
    result = train(cfg, progress=False, log=lambda s: None)
    saved = load_file(result.weights[0])
    embedding = {k for k in saved if "token_embedding" in k}
    assert embedding

    def encoded(weights: Path) -> torch.Tensor:
        pipe = DiffusionPipeline.from_pretrained(path)
        pipe.load_lora_weights(str(weights))
        ids = pipe.tokenizer(["a photo of sks dog"], return_tensors="pt").input_ids
        with torch.no_grad():
            return pipe.text_encoder(ids)[0]

    without = tmp_path / "without_embedding.safetensors"
    save_file({k: v for k, v in saved.items() if k not in embedding}, str(without))
    assert (encoded(result.weights[0]) - encoded(without)).abs().max() > 1e-5

    out = tmp_path / "k.safetensors"
    assert main(["export", str(result.output), "--format", "kohya", "--output", str(out)]) == 2
    err = capsys.readouterr().err
    assert "token embedding" in err and "--text-encoder-targets" in err and "Traceback" not in err
    assert not out.exists()


def test_target_modules_that_match_nothing_are_refused_by_name(tiny_model, photos, tmp_path) -> None:
    path = tiny_model("sd1")
    # One typo in a list is refused too (peft alone would train the others and skip it).
    with pytest.raises(BoothkitError, match="--text-encoder-targets: no module named fc3"):
        train(
            _config(
                path, photos, tmp_path / "a", train_text_encoder=True, text_encoder_targets=("q_proj", "fc3")
            ),
            progress=False,
            log=lambda s: None,
        )
    with pytest.raises(BoothkitError, match="--target-modules: no module named to_z"):
        train(
            _config(path, photos, tmp_path / "b", target_modules=("to_z",)),
            progress=False,
            log=lambda s: None,
        )


def test_user_class_dir_and_v_prediction(tiny_model, photos, tmp_path) -> None:
    path = tiny_model("sd2")
    class_dir = make_photos(tmp_path / "dogs", n=3)
    cfg = _config(path, photos, tmp_path / "r", class_dir=str(class_dir))
    result = train(cfg, progress=False, log=lambda s: None)
    summary = json.loads((result.output / "summary.json").read_text())
    assert summary["class_images"] == 2 and summary["prediction_type"] == "v_prediction"
    rows = [json.loads(line) for line in (result.output / "logs" / "train.jsonl").read_text().splitlines()]
    assert all("prior_loss" in r for r in rows)


def test_refuses_foreign_non_empty_output_and_finished_run(tiny_model, photos, tmp_path) -> None:
    path = tiny_model("sd1")
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "thesis.docx").write_text("precious")
    with pytest.raises(BoothkitError, match="not a boothkit run folder"):
        train(_config(path, photos, foreign), progress=False, log=lambda s: None)
    assert [p.name for p in foreign.iterdir()] == ["thesis.docx"]
    run = tmp_path / "run"
    train(_config(path, photos, run), progress=False, log=lambda s: None)
    with pytest.raises(BoothkitError, match="already holds a finished run"):
        train(_config(path, photos, run), progress=False, log=lambda s: None)


def test_split_token_warns_with_pieces(tiny_model, photos, tmp_path) -> None:
    messages: list[str] = []
    train(
        _config(tiny_model("sd1"), photos, tmp_path / "r", token="qzxv", steps=1),
        progress=False,
        log=messages.append,
    )
    assert any("qzxv" in m and "pieces" in m for m in messages)


def test_memory_options_bf16_checkpointing_warmup(tiny_model, photos, tmp_path) -> None:
    """bf16 autocast, gradient checkpointing and a warm-up schedule run and still train."""
    result = train(
        _config(
            tiny_model("sd1"),
            photos,
            tmp_path / "r",
            mixed_precision="bf16",
            gradient_checkpointing=True,
            lr_schedule="cosine",
            warmup_steps=2,
        ),
        progress=False,
        log=lambda s: None,
    )
    rows = [json.loads(line) for line in (result.output / "logs" / "train.jsonl").read_text().splitlines()]
    assert rows[0]["lr"] < rows[1]["lr"] < rows[2]["lr"]  # warming up
    assert all(torch.isfinite(v).all() for v in load_file(result.weights[0]).values())


def test_fp16_on_cpu_and_missing_bitsandbytes_are_explained(tiny_model, photos, tmp_path) -> None:
    with pytest.raises(BoothkitError, match="fp16 needs a CUDA device"):
        train(_config(tiny_model("sd1"), photos, tmp_path / "a", mixed_precision="fp16"), progress=False)
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        with pytest.raises(BoothkitError, match="bitsandbytes"):
            train(_config(tiny_model("sd1"), photos, tmp_path / "b", adam_8bit=True), progress=False)


@pytest.mark.parametrize("family", ["sd1", "sdxl"])
def test_buckets_keep_aspect_and_feed_matching_time_ids(family, tiny_model, tmp_path) -> None:
    """Tall and wide photos train near their own shape; class images follow the same buckets."""
    from PIL import Image

    from boothkit.data.buckets import assign_bucket, make_buckets
    from boothkit.train import prepare

    photos = tmp_path / "photos"
    photos.mkdir()
    for i, (w, h) in enumerate([(48, 80), (80, 48), (64, 64), (56, 72)]):
        Image.new("RGB", (w, h), (30 * i, 90, 200)).save(photos / f"p{i}.png")
    cfg = _config(tiny_model(family), photos, tmp_path / "run", buckets=True, batch_size=2, resolution=64)
    run = prepare(cfg, None, lambda s: None, sorted(photos.glob("*.png")))
    buckets = make_buckets(64)
    for item in run.instances:
        with Image.open(item.path) as im:
            w, h = im.size
        bw, bh = item.size
        assert (bw, bh) == assign_bucket(w, h, buckets)
        assert abs((bw / bh) / (w / h) - 1) <= 0.10
        assert tuple(item.mean.shape[1:]) == (bh // 4, bw // 4)
        if family == "sdxl":
            assert item.time_ids[4:].tolist() == [bh, bw]  # target size ids follow the bucket
    assert set(run.priors) == {i.size for i in run.instances}
    for size, priors in run.priors.items():
        assert all(p.size == size for p in priors)
    result = train(cfg, progress=False, log=lambda s: None)
    assert result.steps == 4


def test_training_never_touches_the_input_folder(tiny_model, photos, tmp_path) -> None:
    (photos / "photo_0.txt").write_text("a photo of {token} {class_noun} on a sofa")
    before = {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in photos.iterdir()}
    train(_config(tiny_model("sd1"), photos, tmp_path / "run"), progress=False, log=lambda s: None)
    after = {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in photos.iterdir()}
    assert before == after


def test_rejected_photo_stops_before_the_model_loads_unless_skip_invalid(
    tiny_model, photos, tmp_path, capsys
) -> None:
    from boothkit.cli import main

    (photos / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    (photos / ".DS_Store").write_bytes(b"\x00\x00")
    args = [
        "train",
        "--model",
        str(tmp_path / "no-model-needed-yet"),
        "--images",
        str(photos),
        "--output",
        str(tmp_path / "run"),
        "--class-noun",
        "dog",
        "--resolution",
        "32",
    ]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "broken.jpg" in err and "rejected" in err and "--skip-invalid" in err
    assert "does not exist" not in err  # the photos were checked before the model was looked at
    assert not (tmp_path / "run").exists()
    cfg = _config(tiny_model("sd1"), photos, tmp_path / "run2", skip_invalid=True, crop="random")
    result = train(cfg, progress=False, log=lambda s: None)
    assert "broken.jpg" not in " ".join(
        json.loads((result.output / "summary.json").read_text())["instance_images"]
    )


def _prior_prompts(config: TrainConfig) -> list[str]:
    from boothkit.preflight import check_instance_images
    from boothkit.train import prepare

    run = prepare(config, None, lambda s: None, check_instance_images(config))
    (priors,) = run.priors.values()  # one size: no buckets
    return [item.prompt for item in priors]


def test_class_prompts_are_used_in_turn_and_each_class_image_trains_on_its_own(
    tiny_model, photos, tmp_path
) -> None:
    path = tiny_model("sd1")
    prompts = ("a photo of {class_noun} on grass", "a photo of {class_noun} in snow")
    cfg = _config(path, photos, tmp_path / "r", class_images=3, class_prompts=prompts)
    assert _prior_prompts(cfg) == [
        "a photo of dog on grass",
        "a photo of dog in snow",
        "a photo of dog on grass",
    ]
    # The default stays one prompt for every class image.
    assert set(_prior_prompts(_config(path, photos, tmp_path / "s", class_images=3))) == {"a photo of dog"}
    # A full run with them trains and writes its config with the prompts.
    result = train(cfg, progress=False, log=lambda s: None)
    assert "class_prompts" in (result.output / "config.toml").read_text()


def test_captioned_class_dir_images_train_on_their_captions(tiny_model, photos, tmp_path) -> None:
    path = tiny_model("sd1")
    class_dir = make_photos(tmp_path / "dogs", n=2)
    (class_dir / "photo_0.txt").write_text("a photo of a {class_noun} on a beach\n")
    cfg = _config(path, photos, tmp_path / "r", class_dir=str(class_dir))
    assert sorted(_prior_prompts(cfg)) == ["a photo of a dog on a beach", "a photo of dog"]


def test_class_prompts_and_class_dir_together_are_refused(tiny_model, photos, tmp_path) -> None:
    with pytest.raises(BoothkitError, match="--class-prompts .* --class-dir"):
        _config(
            tiny_model("sd1"),
            photos,
            tmp_path / "r",
            class_dir=str(photos),
            class_prompts=("a {class_noun}",),
        )
    with pytest.raises(BoothkitError, match="one-line prompt"):
        _config(tiny_model("sd1"), photos, tmp_path / "r", class_prompts=("  ",))


def test_an_instance_prompt_without_the_token_is_refused_before_any_work(photos, tmp_path, capsys) -> None:
    from boothkit.cli import main as cli_main

    out = tmp_path / "run"
    code = cli_main(
        ["train", "--model", str(tmp_path / "not-loaded-yet"), "--images", str(photos), "--output", str(out),
         "--class-noun", "dog", "--instance-prompt", "a photo of a dog", "--resolution", "32"]
    )  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and "does not name the token" in err and "Traceback" not in err
    assert not out.exists()  # refused before the model loads or anything is written


@pytest.mark.parametrize(
    ("flags", "phrase"),
    [
        (["--output", "{photos}/run"], "--output {photos}/run is inside --images"),
        (["--output", "{photos}"], "--output {photos} is inside --images"),
        (["--output", "{out}", "--bank-dir", "{photos}/bank"], "--bank-dir {photos}/bank is inside --images"),
        (
            ["--output", "{out}", "--class-dir", "{photos}"],
            "--class-dir {photos} and --images {photos} overlap",
        ),
        (["--output", "{classes}/run", "--class-dir", "{classes}"], "is inside --class-dir"),
    ],
)
def test_nothing_is_written_into_the_image_folders(photos, tmp_path, capsys, flags, phrase) -> None:
    from boothkit.cli import main as cli_main

    classes = make_photos(tmp_path / "classes")
    names = {"photos": str(photos), "out": str(tmp_path / "run"), "classes": str(classes)}
    before = {p: sorted(p.rglob("*")) for p in (photos, classes)}
    args = ["train", "--model", str(tmp_path / "m"), "--images", str(photos), "--class-noun", "dog"]
    code = cli_main([*args, *(f.format(**names) for f in flags)])
    err = capsys.readouterr().err
    assert code == 2 and phrase.format(**names) in err and "Traceback" not in err
    assert {p: sorted(p.rglob("*")) for p in (photos, classes)} == before


def test_class_image_captions_that_name_the_token_are_refused(photos, tmp_path, capsys) -> None:
    from boothkit.cli import main as cli_main

    classes = make_photos(tmp_path / "classes")
    first = sorted(p for p in classes.iterdir() if p.suffix != ".txt")[0]
    first.with_suffix(".txt").write_text("a photo of {token} {class_noun} on grass")
    code = cli_main(
        ["train", "--model", str(tmp_path / "m"), "--images", str(photos), "--class-noun", "dog",
         "--class-dir", str(classes), "--resolution", "32", "--output", str(tmp_path / "run")]
    )  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and f"caption of class image {first.name}" in err and "names the token sks" in err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    ("method", "line"),
    [
        (
            "lora",
            "boothkit generate --model base --lora runs/x --prompt 'a photo of sks dog wearing a wizard hat'",
        ),
        (
            "ti",
            "boothkit generate --model base --lora runs/x --prompt 'a photo of <sks> dog wearing a wizard hat'",
        ),
        ("pivotal", "--lora runs/x --prompt 'a photo of <sks> dog"),
        ("full", "boothkit generate --model runs/x --prompt 'a photo of sks dog wearing a wizard hat'"),
    ],
)
def test_the_suggested_generate_command_fits_the_method(method: str, line: str) -> None:
    """TI and pivotal runs are prompted with their placeholder; a full fine-tune is the model itself."""
    from boothkit.outputs import summary_text
    from boothkit.run import TrainResult

    config = TrainConfig(model="base", images="i", output="runs/x", class_noun="dog", method=method)  # type: ignore[arg-type]
    text = summary_text(TrainResult(Path("runs/x"), [], 1, 1.0, 0.1), config)
    assert line in text


def test_a_broken_class_image_is_named_unless_skip_invalid(tiny_model, photos, tmp_path) -> None:
    """Your own class images are checked as your photos are: a broken one stops the run by name
    (it was dropped silently), and --skip-invalid trains on the rest."""
    classes = make_photos(tmp_path / "classes")
    good = sorted(classes.iterdir())[0]
    (classes / "broken.jpg").write_bytes(good.read_bytes()[:200])

    def config(out: str, **kw: object) -> TrainConfig:
        return TrainConfig(
            model=str(tiny_model("sd1")),
            images=str(photos),
            output=str(tmp_path / out),
            class_noun="dog",
            class_dir=str(classes),
            **fast_settings(steps=1, **kw),
        )  # type: ignore[arg-type]

    with pytest.raises(BoothkitError, match=r"(?s)--class-dir .*can't be used.*broken\.jpg"):
        train(config("a"), progress=False, log=lambda s: None)
    result = train(config("b", skip_invalid=True), progress=False, log=lambda s: None)
    assert (result.output / "pytorch_lora_weights.safetensors").is_file()


@pytest.mark.parametrize("method", ["lora", "full"])
def test_the_text_encoders_work_only_while_the_run_prepares(tiny_model, photos, tmp_path, method) -> None:
    """With no text encoder training, every prompt (the validation prompts too) is encoded once, before
    the loop, so the encoders can leave the accelerator: a run that samples four times calls them as
    often as one that samples once, and the grids are what the pipeline draws from the prompt itself."""
    calls = []
    for steps in (1, 4):
        model = load_model(str(tiny_model("sd1")))
        count = [0]
        for encoder in model.text_encoders:
            encoder.register_forward_hook(lambda *_, n=count: n.__setitem__(0, n[0] + 1))
        out = tmp_path / f"run{steps}"
        config = _config(
            tiny_model("sd1"), photos, out, steps=steps, sample_every=1, prior=False, method=method
        )
        train(config, model=model, progress=False, log=lambda s: None)
        calls.append(count[0])
    assert calls[0] == calls[1] > 0

    prompt = "a photo of sks dog"
    before = count[0]
    drawn = sample_images(model, [prompt], [0], 32, 2)[0][0]
    assert count[0] > before  # this one encodes its prompt
    cached = sample_images(model, [prompt], [0], 32, 2, encode_sample_prompts(model, [prompt]))[0][0]
    diff = torch.tensor(np.asarray(drawn, dtype=np.float32) - np.asarray(cached, dtype=np.float32)).abs()
    assert diff.max() <= 1  # 8-bit images: the same picture
