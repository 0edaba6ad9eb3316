"""The (family x method) table: exactly the intended parameters train, everything else is untouched,
and each method's output reloads through the public diffusers API and changes generation."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from boothkit.checkpoint import load_checkpoint
from boothkit.config import TrainConfig
from boothkit.errors import BoothkitError
from boothkit.families import load_model
from boothkit.train import train
from conftest import crash_at_step, fast_settings

FAMILIES = ["sd1", "sd2", "sdxl"]
PROMPT = "a photo of {} dog"


def _run(model_dir: Path, photos: Path, out: Path, method: str, **kw: object):
    model = load_model(str(model_dir))
    base_unet = {k: v.clone() for k, v in model.unet.state_dict().items()}
    base_te = [{k: v.clone() for k, v in e.state_dict().items()} for e in model.text_encoders]
    cfg = TrainConfig(
        model=str(model_dir),
        images=str(photos),
        output=str(out),
        class_noun="dog",
        method=method,
        **fast_settings(**{"steps": 3, "ti_lr": 0.05, **kw}),
    )  # type: ignore[arg-type]
    result = train(cfg, model=model, progress=False, log=lambda s: None)
    return model, base_unet, base_te, result


def _image(pipe, prompt: str):
    return pipe(
        prompt,
        num_inference_steps=2,
        height=32,
        width=32,
        output_type="np",
        generator=torch.Generator().manual_seed(0),
    ).images


def _fresh(model_dir: Path):
    from diffusers import DiffusionPipeline

    pipe = DiffusionPipeline.from_pretrained(model_dir)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.mark.parametrize("family", FAMILIES)
def test_full_finetune(family, tiny_model, photos, tmp_path) -> None:
    model, base_unet, base_te, result = _run(tiny_model(family), photos, tmp_path / "run", "full")
    assert all(p.requires_grad for p in model.unet.parameters())
    assert not any(p.requires_grad for e in model.text_encoders for p in e.parameters())
    changed = [k for k, v in model.unet.state_dict().items() if not torch.equal(v, base_unet[k])]
    assert len(changed) > len(base_unet) // 2
    for enc, base in zip(model.text_encoders, base_te, strict=True):
        assert all(torch.equal(v, base[k]) for k, v in enc.state_dict().items())
    # The run's model/ folder is a diffusers pipeline; generating with it differs from the base.
    tuned = _fresh(result.output / "model")
    assert (
        abs(
            _image(tuned, PROMPT.format("sks")) - _image(_fresh(tiny_model(family)), PROMPT.format("sks"))
        ).max()
        > 1e-3
    )
    # boothkit's own loader takes the run folder as --model.
    assert load_model(str(result.output)).source.path == (result.output / "model").resolve()


def test_full_with_text_encoder_and_ema(tiny_model, photos, tmp_path) -> None:
    model, _, base_te, result = _run(
        tiny_model("sd1"),
        photos,
        tmp_path / "run",
        "full",
        train_text_encoder=True,
        text_encoder_lr=1e-3,
        ema=True,
        ema_decay=0.5,
        checkpoint_every=1,
    )
    assert any(not torch.equal(v, base_te[0][k]) for k, v in model.text_encoders[0].state_dict().items())
    saved = _fresh(result.output / "model").unet.state_dict()
    raw = model.unet.state_dict()  # in memory: the raw (non-averaged) weights
    ema = load_checkpoint(result.output / "checkpoints" / "step-000003").trainable
    ema_unet = {k.removeprefix("method.ema."): v for k, v in ema.items() if k.startswith("method.ema.")}
    differ = [k for k in saved if not torch.equal(saved[k], raw[k])]
    assert differ, "EMA weights should differ from the raw weights"
    assert all(torch.equal(saved[k], ema_unet[k]) for k in saved), "the saved UNet is the EMA"


@pytest.mark.parametrize("family", FAMILIES)
def test_textual_inversion(family, tiny_model, photos, tmp_path) -> None:
    model, base_unet, base_te, result = _run(
        tiny_model(family), photos, tmp_path / "run", "ti", num_vectors=2
    )
    assert all(torch.equal(v, base_unet[k]) for k, v in model.unet.state_dict().items())
    for tokenizer, enc, base in zip(model.tokenizers, model.text_encoders, base_te, strict=True):
        trainable = [n for n, p in enc.named_parameters() if p.requires_grad]
        assert len(trainable) == 1 and trainable[0].endswith("embeddings.token_embedding.weight")
        emb_key = next(k for k in base if k.endswith("token_embedding.weight"))
        ids = tokenizer.convert_tokens_to_ids(["<sks>", "<sks>_1"])
        weight = enc.get_input_embeddings().weight
        old = base[emb_key]
        assert torch.equal(weight[: old.shape[0]], old), "every original row is bit-identical"
        init = old[tokenizer.convert_tokens_to_ids(["dog</w>"])[0]]
        assert all(not torch.equal(weight[i], init) for i in ids), "the new rows trained"
        for name, v in enc.state_dict().items():
            if name != emb_key:
                assert torch.equal(v, base[name])
    embeds = load_file(result.output / "learned_embeds.safetensors")
    assert set(embeds) == ({"clip_l", "clip_g"} if family == "sdxl" else {"<sks>"})
    assert all(v.shape[0] == 2 for v in embeds.values())
    # Reload with the public API; the learned token renders differently from its initializer word.
    pipe = _fresh(tiny_model(family))
    before = _image(pipe, "a photo of dog dog dog")
    if family == "sdxl":
        pipe.load_textual_inversion(
            embeds["clip_l"], token="<sks>", text_encoder=pipe.text_encoder, tokenizer=pipe.tokenizer
        )
        pipe.load_textual_inversion(
            embeds["clip_g"], token="<sks>", text_encoder=pipe.text_encoder_2, tokenizer=pipe.tokenizer_2
        )
    else:
        pipe.load_textual_inversion(str(result.output / "learned_embeds.safetensors"))
    assert abs(_image(pipe, "a photo of <sks> dog") - before).max() > 1e-4
    # And through boothkit's generate path.
    from boothkit.adapters import parse_adapter
    from boothkit.pipelines import open_pipeline

    ours = open_pipeline(str(tiny_model(family)), [parse_adapter(str(result.output))])
    assert "<sks>" in ours.tokenizer.get_vocab()


@pytest.mark.parametrize("family", FAMILIES)
def test_pivotal_phases_and_generate(family, tiny_model, photos, tmp_path) -> None:
    out = tmp_path / "run"
    model, base_unet, base_te, result = _run(
        tiny_model(family), photos, out, "pivotal", steps=4, ti_fraction=0.5, checkpoint_every=2
    )
    mid = load_checkpoint(out / "checkpoints" / "step-000002").trainable
    end = load_checkpoint(out / "checkpoints" / "step-000004").trainable
    emb_keys = [k for k in mid if k.endswith("token_embedding.weight")]
    lora_keys = [k for k in mid if "lora_" in k]
    assert emb_keys and lora_keys
    # Phase 2 (steps 3-4) trains only the LoRA: embeddings frozen where phase 1 left them.
    assert all(torch.equal(mid[k], end[k]) for k in emb_keys)
    assert any(not torch.equal(mid[k], end[k]) for k in lora_keys)
    # Phase 1 (steps 1-2) trained only the embeddings: the LoRA's B matrices are still their zero init.
    assert all(not mid[k].any() for k in lora_keys if "lora_B" in k)
    assert (out / "pytorch_lora_weights.safetensors").is_file() and (
        out / "learned_embeds.safetensors"
    ).is_file()
    assert (
        all(
            torch.equal(v, base_unet[k])
            for k, v in model.unet.base_model.model.state_dict().items()
            if k in base_unet
        )
        if hasattr(model.unet, "base_model")
        else True
    )
    from boothkit.adapters import parse_adapter
    from boothkit.pipelines import open_pipeline

    pipe = open_pipeline(str(tiny_model(family)), [parse_adapter(str(out))])
    assert "<sks>" in pipe.tokenizer.get_vocab()
    assert pipe.get_active_adapters()
    base = open_pipeline(str(tiny_model(family)), [])
    assert abs(_image(pipe, PROMPT.format("<sks>")) - _image(base, PROMPT.format("<sks>"))).max() > 1e-4


@pytest.mark.parametrize("family", ["sd1", "sdxl"])
def test_pivotal_with_text_encoder_lora_loads(family, tiny_model, photos, tmp_path) -> None:
    """Pivotal tuning with --train-text-encoder: the new token grows the encoders' vocabularies, and
    the LoRA file must still hold LoRA matrices only (a whole embedding matrix in it made diffusers
    refuse the file: "all LoRA param names contain 'lora'")."""
    out = tmp_path / "run"
    _run(tiny_model(family), photos, out, "pivotal", train_text_encoder=True)
    keys = list(load_file(out / "pytorch_lora_weights.safetensors"))
    assert all("lora" in k for k in keys), [k for k in keys if "lora" not in k]
    assert any(k.startswith("text_encoder.") for k in keys)
    from boothkit.adapters import parse_adapter
    from boothkit.pipelines import open_pipeline

    pipe = open_pipeline(str(tiny_model(family)), [parse_adapter(str(out))])
    assert "<sks>" in pipe.tokenizer.get_vocab()
    te_lora = [n for n, _ in pipe.text_encoder.named_parameters() if "lora_B" in n]
    assert te_lora, "the text encoder's LoRA was not applied"
    no_te = open_pipeline(str(tiny_model(family)), [parse_adapter(str(out))])
    no_te.text_encoder.disable_adapters()
    prompt = PROMPT.format("<sks>")
    assert abs(_image(pipe, prompt) - _image(no_te, prompt)).max() > 1e-4


def test_existing_token_is_refused_for_ti(tiny_model, photos, tmp_path) -> None:
    model = load_model(str(tiny_model("sd1")))
    model.tokenizers[0].add_tokens(["<sks>"])
    cfg = TrainConfig(
        model=str(tiny_model("sd1")),
        images=str(photos),
        output=str(tmp_path / "r"),
        class_noun="dog",
        method="ti",
        **fast_settings(),
    )  # type: ignore[arg-type]
    with pytest.raises(BoothkitError, match="already in the tokenizer"):
        train(cfg, model=model, progress=False, log=lambda s: None)


def test_method_flags_are_validated() -> None:
    req = {"model": "m", "images": "i", "output": "o", "prior": False}
    with pytest.raises(BoothkitError, match="--train-text-encoder does not apply to --method ti"):
        TrainConfig(**req, method="ti", class_noun="dog", train_text_encoder=True)  # type: ignore[arg-type]
    with pytest.raises(BoothkitError, match="--ema applies to --method full"):
        TrainConfig(**req, ema=True)  # type: ignore[arg-type]
    with pytest.raises(BoothkitError, match="needs a word to start the new token"):
        TrainConfig(**req, method="ti")  # type: ignore[arg-type]
    with pytest.raises(BoothkitError, match="--ti-fraction must be between 0 and 1"):
        TrainConfig(**req, method="pivotal", class_noun="dog", ti_fraction=1.5)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("method", "extra"), [("full", {"ema": True}), ("ti", {}), ("pivotal", {"ti_fraction": 0.5})]
)
def test_every_method_resumes_exactly(method, extra, tiny_model, photos, tmp_path, monkeypatch) -> None:
    settings = {"steps": 4, "checkpoint_every": 2, "ti_lr": 0.05, **extra}
    _, _, _, ref = _run(tiny_model("sd1"), photos, tmp_path / "ref", method, **settings)
    with crash_at_step(monkeypatch, 3):
        _run(tiny_model("sd1"), photos, tmp_path / "run", method, **settings)
    _, _, _, resumed = _run(tiny_model("sd1"), photos, tmp_path / "run", method, resume="latest", **settings)
    for name in (
        "pytorch_lora_weights.safetensors",
        "learned_embeds.safetensors",
        "model/unet/diffusion_pytorch_model.safetensors",
    ):
        if (ref.output / name).exists():
            a, b = load_file(ref.output / name), load_file(resumed.output / name)
            assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name


def test_full_single_file_export_loads_back_to_the_same_weights(tiny_model, photos, tmp_path) -> None:
    model, _, _, result = _run(tiny_model("sd1"), photos, tmp_path / "run", "full", save_single_file=True)
    ckpt = result.output / "model.safetensors"
    assert ckpt.is_file()
    back = load_model(
        str(ckpt),
        __import__("boothkit.families", fromlist=["LoadOptions"]).LoadOptions(
            model_config=str(tiny_model("sd1"))
        ),
    )
    saved = _fresh(result.output / "model").unet.state_dict()
    assert all(torch.equal(v, saved[k]) for k, v in back.unet.state_dict().items())


@pytest.mark.parametrize(
    ("name", "identifier", "standalone", "network"),
    [
        ("lora", "sks", False, True),
        ("full", "sks", True, False),
        ("ti", "<sks>", False, False),
        ("pivotal", "<sks>", False, True),
    ],
)
def test_each_method_answers_for_itself(name, identifier, standalone, network) -> None:
    """The word prompts use, whether a run is a model of its own, and what its files say: asked of the
    method, never decided by testing its name elsewhere."""
    from boothkit.config import METHODS
    from boothkit.metadata import lora_metadata
    from boothkit.methods import get_method

    assert set(METHODS) == {"lora", "full", "ti", "pivotal"}
    method = get_method(name)
    assert method.name == name and method.identifier("sks") == identifier and method.standalone is standalone
    common = lora_metadata(base_model="m", family="sd1", rank=4, alpha=4, steps=1, resolution=32, method=name)
    meta = method.file_metadata(common)
    assert ("ss_network_dim" in meta) is network and ("boothkit_rank" in meta) is network
    arch = meta["modelspec.architecture"]
    assert (
        arch
        == {
            "lora": "stable-diffusion-v1/lora",
            "pivotal": "stable-diffusion-v1/lora",
            "full": "stable-diffusion-v1",
            "ti": "stable-diffusion-v1/textual-inversion",
        }[name]
    )
