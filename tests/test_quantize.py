"""--quantize-base: the frozen base denoiser's linear layers in int8, fp8 or nf4 (torchao) under a LoRA."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import FluxPipeline
from safetensors.torch import load_file

from boothkit.errors import BoothkitError
from boothkit.families import load_model
from boothkit.files import LORA_FILE
from boothkit.quantize import nf4_blocks, quantize_linear_layers, stored_bytes
from boothkit.train import train
from conftest import crash_at_step, run_cli, train_args, train_config


def _quiet(message: str) -> None:
    pass


@pytest.mark.parametrize(("kind", "share"), [("int8", 0.26), ("fp8", 0.26), ("nf4", 0.14)])
def test_a_quantised_layer_takes_its_share_of_the_memory_and_computes_nearly_the_same(kind, share) -> None:
    """At Flux's width (3072), int8 and fp8 store a quarter of fp32's bytes (half of bf16's), nf4
    an eighth plus its scales; the outputs stay close to the full-precision layer's."""
    torch.manual_seed(0)
    layer = torch.nn.Sequential(torch.nn.Linear(3072, 256))
    x = torch.randn(8, 3072)
    exact = layer(x).detach()
    report = quantize_linear_layers(layer, kind)
    assert report.layers == report.linear_layers == 1
    assert report.bytes_after == stored_bytes(layer[0].weight) <= share * report.bytes_before
    error = (layer(x) - exact).norm() / exact.norm()
    assert error < {"int8": 0.01, "fp8": 0.05, "nf4": 0.15}[kind], error


def test_nf4_blocks_fit_small_layers() -> None:
    assert nf4_blocks(3072 * 3072) == (64, 256)
    assert nf4_blocks(32 * 32) == (64, 16)  # 16 blocks: the second-level block shrinks to 16
    assert nf4_blocks(100) is None


@pytest.mark.parametrize("kind", ["int8", "fp8", "nf4"])
def test_a_lora_trains_over_a_quantised_flux_and_loads_into_the_full_one(
    kind, tiny_model, photos, tmp_path
) -> None:
    path = tiny_model("flux1")
    model = load_model(str(path))
    config = train_config(path, photos, tmp_path / "run", steps=4, lr=5e-2, prior=False, quantize_base=kind)
    result = train(config, model=model, progress=False, log=_quiet)
    weight = model.transformer.transformer_blocks[0].attn.to_q.base_layer.weight
    assert type(weight.data) is not torch.Tensor and not weight.requires_grad  # stored quantised, frozen
    lora = load_file(result.output / LORA_FILE)
    assert any(k.endswith("lora_B.weight") and v.abs().sum() > 0 for k, v in lora.items())

    pipe = FluxPipeline.from_pretrained(path)
    pipe.set_progress_bar_config(disable=True)

    def image() -> np.ndarray:
        return pipe(
            "a photo of sks dog",
            height=32,
            width=32,
            num_inference_steps=2,
            max_sequence_length=32,
            generator=torch.Generator().manual_seed(0),
            output_type="np",
        ).images[0]

    base = image()
    pipe.load_lora_weights(str(result.output))
    assert np.abs(image() - base).max() > 1e-4


def test_a_quantised_run_resumes_to_the_same_weights(tiny_model, photos, tmp_path, monkeypatch) -> None:
    """The base is quantised again the same way on resume, so the LoRA ends bit-identical."""
    path = tiny_model("flux1")
    settings = {"steps": 4, "checkpoint_every": 2, "prior": False, "quantize_base": "nf4"}
    ref = train(train_config(path, photos, tmp_path / "ref", **settings), progress=False, log=_quiet)
    with crash_at_step(monkeypatch, 3):
        train(train_config(path, photos, tmp_path / "run", **settings), progress=False, log=_quiet)
    resumed = train(
        train_config(path, photos, tmp_path / "run", resume="latest", **settings), progress=False, log=_quiet
    )
    a, b = load_file(ref.output / LORA_FILE), load_file(resumed.output / LORA_FILE)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_quantize_base_is_refused_for_a_full_fine_tune(tiny_model, photos, tmp_path, capsys) -> None:
    args = train_args(tiny_model("sd1"), photos, tmp_path / "run", method="full", quantize_base="int8")
    code, _, err = run_cli(capsys, *args)
    assert code == 2 and "--quantize-base int8 does not apply to --method full" in err
    assert not (tmp_path / "run").exists()
    with pytest.raises(BoothkitError):
        train_config(tiny_model("sd1"), photos, tmp_path / "x", method="full", quantize_base="nf4")
