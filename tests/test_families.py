import json
import shutil
from pathlib import Path

import pytest
import torch

from boothkit.errors import BoothkitError
from boothkit.families import LoadOptions, detect_family, fingerprint, load_model, resolve_model


@pytest.mark.parametrize(
    ("family", "prediction", "resolution"),
    [("sd1", "epsilon", 32), ("sd2", "v_prediction", 32), ("sdxl", "epsilon", 32)],
)
def test_detects_family_and_prediction_from_files(tiny_model, family, prediction, resolution) -> None:
    path = tiny_model(family)
    assert detect_family(path) == (family, prediction)
    model = load_model(str(path))
    assert model.name == family
    assert model.prediction_type == prediction
    assert model.noise_scheduler.config.prediction_type == prediction
    assert model.default_resolution == resolution
    assert not any(p.requires_grad for p in model.unet.parameters())


def test_prediction_type_comes_from_scheduler_config_not_name(tiny_model, tmp_path: Path) -> None:
    # An SD1-named folder whose scheduler says v_prediction is a v model.
    copy = shutil.copytree(tiny_model("sd1"), tmp_path / "sd-v1-5-epsilon-model")
    cfg_path = copy / "scheduler" / "scheduler_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["prediction_type"] = "v_prediction"
    cfg_path.write_text(json.dumps(cfg))
    assert detect_family(copy) == ("sd1", "v_prediction")


@pytest.mark.parametrize("family", ["sd1", "sd2", "sdxl"])
def test_conditioning_shapes(tiny_model, family) -> None:
    model = load_model(str(tiny_model(family)))
    cond = model.encode_prompts(["a photo of sks dog", "a dog"])
    assert cond.hidden_states.shape[:2] == (2, 77)
    assert cond.hidden_states.shape[2] == model.unet.config.cross_attention_dim
    assert (cond.pooled is not None) == (family == "sdxl")
    latents = torch.randn(2, 4, 8, 8)
    ids = torch.stack([model.time_ids((40, 48), (0, 4), (32, 32))] * 2)
    out = model.predict(latents, torch.tensor([10, 500]), cond, ids)
    assert out.shape == latents.shape


def test_sdxl_time_ids_are_size_crop_target() -> None:
    from boothkit.families.sdxl import SDXL

    ids = SDXL.time_ids(None, (768, 1024), (10, 20), (512, 512))  # type: ignore[arg-type]
    assert ids.tolist() == [768, 1024, 10, 20, 512, 512]


def test_not_a_model_folder(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("hi")
    with pytest.raises(BoothkitError, match="not a diffusers model folder"):
        load_model(str(tmp_path))


def test_unknown_pipeline_is_named(tiny_model, tmp_path: Path) -> None:
    copy = shutil.copytree(tiny_model("sd1"), tmp_path / "m")
    index = json.loads((copy / "model_index.json").read_text())
    index["_class_name"] = "FluxPipeline"
    (copy / "model_index.json").write_text(json.dumps(index))
    with pytest.raises(BoothkitError, match="FluxPipeline"):
        detect_family(copy)


def test_missing_path_and_pickle_refused(tmp_path: Path) -> None:
    with pytest.raises(BoothkitError, match="does not exist"):
        resolve_model(str(tmp_path / "nope"))
    ckpt = tmp_path / "model.ckpt"
    ckpt.write_bytes(b"not really")
    with pytest.raises(BoothkitError, match="pickle"):
        load_model(str(ckpt))


def test_hub_id_offline_without_cache_is_explained(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    import huggingface_hub.constants as c

    monkeypatch.setattr(c, "HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    monkeypatch.setattr(c, "HF_HUB_OFFLINE", True)
    with pytest.raises(BoothkitError, match="not in the local Hugging Face cache"):
        load_model("someone/some-model")


def test_hub_id_loads_from_the_hf_cache(tiny_model, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Lay the tiny model out as the hub cache stores a snapshot: models--org--name/snapshots/<rev>/...
    cache = tmp_path / "hub"
    repo = cache / "models--tester--tiny-sd"
    rev = "0123456789abcdef0123456789abcdef01234567"
    shutil.copytree(tiny_model("sd1"), repo / "snapshots" / rev)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(rev)
    import huggingface_hub.constants as c

    monkeypatch.setattr(c, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(c, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    model = load_model("tester/tiny-sd")
    assert model.name == "sd1"
    assert model.source.path == repo / "snapshots" / rev


def test_fingerprint_changes_with_weights(tiny_model, tmp_path: Path) -> None:
    copy = shutil.copytree(tiny_model("sd1"), tmp_path / "m")
    before = fingerprint(copy)
    assert fingerprint(copy) == before
    weights = copy / "unet" / "diffusion_pytorch_model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    data[200] ^= 0xFF
    weights.write_bytes(bytes(data))
    assert fingerprint(copy) != before


@pytest.mark.parametrize("family", ["sd1", "sd2", "sdxl"])
def test_single_file_checkpoint_loads_through_the_loader(family, tiny_model, tmp_path: Path) -> None:
    """A single-file .safetensors in the original layout (as model sites ship) loads with its configs."""
    from boothkit.families.single_file import save_single_file

    folder = tiny_model(family)
    ckpt = save_single_file(folder, tmp_path / f"{family}.safetensors")
    model = load_model(str(ckpt), LoadOptions(model_config=str(folder)))
    reference = load_model(str(folder))
    assert model.name == family and model.source.single_file
    assert model.prediction_type == reference.prediction_type
    for ours, theirs in [
        (model.unet, reference.unet),
        (model.vae, reference.vae),
        *zip(model.text_encoders, reference.text_encoders, strict=True),
    ]:
        a, b = ours.state_dict(), theirs.state_dict()
        assert all(torch.equal(a[k], b[k]) for k in b if k in a)
        assert len(set(b) - set(a)) == 0 or family == "sd2"  # SD2 files omit OpenCLIP's unused projection


def test_single_file_without_configs_offline_is_explained(tiny_model, tmp_path: Path) -> None:
    from boothkit.families.single_file import save_single_file

    ckpt = save_single_file(tiny_model("sd1"), tmp_path / "model.safetensors")
    with pytest.raises(BoothkitError, match="--model-config|not in the local Hugging Face cache"):
        load_model(str(ckpt))
