"""Study grids on the tiny SD1 model: layout, labels, metadata, determinism, LoRA rows, prompt files, CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from safetensors.torch import load_file, save_file

from boothkit.adapters import Adapter
from boothkit.cli import main
from boothkit.errors import BoothkitError
from boothkit.files import LORA_FILE
from boothkit.studies import (
    DEFAULT_STYLES,
    KINDS,
    Cell,
    Renderer,
    Sampling,
    StudyRequest,
    compare_study,
    guidance_study,
    parse_row,
    resolve_seeds,
    run_study,
    seeds_study,
    style_prompt,
    styles_study,
    token_prompts,
    token_study,
)
from conftest import SHARED, fast_settings, make_photos

FAST = Sampling(steps=2, width=32, height=32)
CELL = 128 + 4  # labelled_grid upscales 32 px cells x4 to 128 px, plus 4 px padding
LABEL_W = 160


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """32 px images gain nothing from intra-op threads, and on a busy shared CPU OpenMP's spinning
    threads make them 10-100x slower; one thread is also bit-for-bit deterministic."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def renderer(tiny_model) -> Renderer:
    return Renderer.load(str(tiny_model("sd1")))


@pytest.fixture(scope="module")
def lora_run(tiny_model, tmp_path_factory) -> Path:
    """A 4-step LoRA run with a checkpoint at its last step (about a second of training)."""
    from boothkit.config import TrainConfig
    from boothkit.train import train

    root = tmp_path_factory.mktemp("study_run")
    config = TrainConfig(
        model=str(tiny_model("sd1")),
        images=str(make_photos(root / "photos")),
        output=str(root / "run"),
        class_noun="dog",
        **fast_settings(checkpoint_every=4, prior=False),  # type: ignore[arg-type]
    )
    return train(config, progress=False, log=lambda s: None).output


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"))


def cell_crop(grid: Image.Image, n_rows: int, row: int, col: int, left: int = LABEL_W) -> Image.Image:
    """Where labelled_grid pastes cell (row, col): rows are stacked from the bottom edge up."""
    y = grid.height - (n_rows - row) * CELL
    x = left + 4 + col * CELL
    return grid.crop((x, y, x + 128, y + 128))


# ----------------------------------------------------------------------------- layout, labels, metadata


def test_guidance_grid_layout_labels_and_png_metadata(renderer, tmp_path) -> None:
    study = guidance_study(renderer, "a photo of sks dog", values=(1.5, 7.5, 20), seeds=(0, 1), sampling=FAST)
    assert study.col_labels == ["guidance 1.5", "guidance 7.5", "guidance 20"]
    assert study.row_labels == ["seed 0", "seed 1"]
    assert study.grid.width == LABEL_W + 3 * CELL + 4
    assert study.grid.height > 2 * CELL  # rows plus title and column labels
    for i in range(2):
        for j in range(3):
            assert study.cells[i][j].guidance == [1.5, 7.5, 20][j] and study.cells[i][j].seed == i
            upscaled = study.images[i][j].resize((128, 128), Image.Resampling.NEAREST)
            assert np.array_equal(pixels(cell_crop(study.grid, 2, i, j)), pixels(upscaled))
    distinct = {pixels(im).tobytes() for row in study.images for im in row}
    assert len(distinct) == 6

    path = study.save(tmp_path / "g.png")
    info = Image.open(path).info
    meta = json.loads(info["boothkit"])
    assert meta["kind"] == "guidance" and meta["rows"] == ["seed 0", "seed 1"]
    assert meta["columns"] == study.col_labels and meta["steps"] == 2 and meta["width"] == 32
    assert meta["cells"][1][2] == {
        "prompt": "a photo of sks dog",
        "seed": 1,
        "guidance": 20.0,
        "adapters": [],
    }
    assert "guidance 7.5" in info["parameters"] and "Steps: 2" in info["parameters"]
    assert not list(tmp_path.glob(".*.tmp"))  # written atomically: no temporary left behind


def test_more_columns_make_a_wider_grid_and_more_rows_a_taller_one(renderer) -> None:
    one = seeds_study(renderer, "a dog", seeds=(3,), sampling=FAST)
    three = seeds_study(renderer, "a dog", seeds=(3, 4, 5), sampling=FAST)
    assert three.grid.width - one.grid.width == 2 * CELL and three.grid.height == one.grid.height
    assert three.col_labels == ["seed 3", "seed 4", "seed 5"] and three.row_labels == ["a dog"]
    # the seed-3 cell is the same image whichever grid it is in: each cell has its own generator
    assert np.array_equal(pixels(one.images[0][0]), pixels(three.images[0][0]))
    tall = guidance_study(renderer, "a dog", values=(7.5,), seeds=(3, 4, 5), sampling=FAST)
    assert (
        tall.grid.height
        - guidance_study(renderer, "a dog", values=(7.5,), seeds=(3,), sampling=FAST).grid.height
        == 2 * CELL
    )


def test_same_arguments_give_identical_bytes(renderer, tmp_path) -> None:
    def once(name: str) -> bytes:
        study = styles_study(renderer, "a sks dog", styles=("anime", "pixel art"), seeds=(5,), sampling=FAST)
        return study.save(tmp_path / name).read_bytes()

    assert once("a.png") == once("b.png")


def test_styles_prompts_and_defaults(renderer) -> None:
    assert len(DEFAULT_STYLES) == 9 and "Ukiyo-e woodblock print" in DEFAULT_STYLES
    assert style_prompt("a sks dog", "watercolor") == "a sks dog, watercolor style"
    study = styles_study(renderer, "a sks dog", styles=("anime", "Van Gogh"), sampling=FAST)
    assert [c.prompt for c in study.cells[0]] == ["a sks dog, anime style", "a sks dog, Van Gogh style"]
    assert study.col_labels == ["anime", "Van Gogh"]
    with pytest.raises(BoothkitError, match="must contain both"):
        styles_study(renderer, "a dog", template="{prompt} painted", sampling=FAST)


# ----------------------------------------------------------------------------- compare: LoRA rows


def test_compare_rows_weight_zero_is_base_and_a_checkpoint_matches_its_run(renderer, lora_run) -> None:
    checkpoint = lora_run / "checkpoints" / "step-000004"
    rows = [
        parse_row(f"LoRA 1.0={lora_run}:1.0"),
        parse_row("base=base"),
        parse_row(f"LoRA 0={lora_run}:0"),
        parse_row(f"step 4={checkpoint}"),
    ]
    study = compare_study(renderer, rows, ["a photo of sks dog", "a sks dog on the beach"], sampling=FAST)
    assert study.row_labels == ["LoRA 1.0", "base", "LoRA 0", "step 4"]
    assert study.col_labels == ["a photo of sks dog", "a sks dog on the beach"]
    full, base, zero, ckpt = ([pixels(im) for im in row] for row in study.images)
    for j in range(2):
        assert np.array_equal(zero[j], base[j])  # weight 0 adds exactly nothing
        assert not np.array_equal(full[j], base[j])  # the LoRA changes the picture
        assert np.array_equal(ckpt[j], full[j])  # the last checkpoint is the saved LoRA
    assert study.cells[0][0].adapters[0].weight == 1.0 and study.cells[1][0].adapters == ()


def test_parse_row_forms_and_errors(lora_run, tmp_path) -> None:
    assert parse_row("base=base").adapters == ()
    two = parse_row(f"mix={lora_run}:0.5+{lora_run / 'pytorch_lora_weights.safetensors'}:0.25")
    assert two.label == "mix" and [a.weight for a in two.adapters] == [0.5, 0.25]
    unnamed = parse_row(f"{lora_run}:0.7")
    assert unnamed.label == f"{lora_run}:0.7" and unnamed.adapters[0].weight == 0.7
    with pytest.raises(BoothkitError, match="weight 'abc' is not a number"):
        parse_row(f"x={lora_run}:abc")
    with pytest.raises(BoothkitError, match="does not exist"):
        parse_row(f"x={tmp_path / 'nope'}")
    with pytest.raises(BoothkitError, match="no model after"):
        parse_row("x=")


def test_lora_of_another_family_is_refused(tiny_model, lora_run) -> None:
    """A grid loads adapters as generate does: the family check names both families before diffusers
    is asked (it used to be skipped here), and a file without boothkit's metadata still fails by name."""
    sdxl = Renderer.load(str(tiny_model("sdxl")))
    row = parse_row(f"x={lora_run}")
    with pytest.raises(BoothkitError, match=r"trained for SD 1.x \(sd1\) but the base model is SDXL"):
        sdxl.render(Cell("a photo of sks dog", 0, 5.0, row.adapters), Sampling(steps=1))
    bare = lora_run.parent / "bare.safetensors"
    save_file(load_file(str(lora_run / LORA_FILE)), str(bare))  # the same tensors, no metadata
    with pytest.raises(BoothkitError, match="could not apply LoRA|no layer that matches"):
        sdxl.render(Cell("a photo of sks dog", 0, 5.0, (Adapter(bare),)), Sampling(steps=1))


# ----------------------------------------------------------------------------- token


def test_token_prompts() -> None:
    assert token_prompts("a photo of {token} {class_noun}", token="sks", class_noun="dog") == (
        "a photo of sks dog",
        "a photo of dog",
    )
    assert token_prompts("a sks dog, smiling", token="sks", class_noun=None) == (
        "a sks dog, smiling",
        "a dog, smiling",
    )
    assert token_prompts("{token}, in snow", token="zwx", class_noun=None) == ("zwx, in snow", ", in snow")
    with pytest.raises(BoothkitError, match="does not contain the token 'sks'"):
        token_prompts("a photo of a dog", token="sks", class_noun="dog")


def test_token_grid_rows_with_and_without(renderer) -> None:
    study = token_study(renderer, token="sks", class_noun="dog", seeds=(0, 1), sampling=FAST)
    assert study.row_labels == ["with token: a photo of sks dog", "without token: a photo of dog"]
    assert study.col_labels == ["seed 0", "seed 1"]
    assert [c.prompt for c in study.cells[1]] == ["a photo of dog"] * 2
    assert not np.array_equal(pixels(study.images[0][0]), pixels(study.images[1][0]))


# ----------------------------------------------------------------------------- prompt files


@pytest.mark.skipif(not (SHARED / "prompts_and_classes.txt").is_file(), reason="shared dataset not present")
def test_seed_defaults_per_kind() -> None:
    assert resolve_seeds("seeds", 10, None, None) == list(range(10, 18))
    assert resolve_seeds("token", 0, None, None) == [0, 1, 2, 3]
    assert resolve_seeds("guidance", 7, None, None) == [7]
    assert resolve_seeds("styles", 0, [5, 9], 3) == [5, 9]
    with pytest.raises(BoothkitError):
        resolve_seeds("seeds", 0, None, 0)


def test_run_study_checks_input_before_loading_the_model(tmp_path) -> None:
    def req(**kw) -> StudyRequest:
        return StudyRequest(model=str(tmp_path / "no-model"), **{"kind": "guidance", "prompts": ["x"], **kw})

    for kw, needle in [
        ({"kind": "colours"}, "unknown grid kind"),
        ({"prompts": []}, "exactly one --prompt"),
        ({"kind": "compare"}, "compare needs rows"),
        ({"kind": "prompts", "prompts": [], "prompts_file": str(tmp_path / "p.txt")}, "does not exist"),
        ({"scheduler": "nope"}, "--scheduler 'nope' is not known"),
        ({"prompts": ["a {tokn}"]}, "unknown placeholder"),
    ]:
        with pytest.raises(BoothkitError, match=needle):
            run_study(req(**kw))
    assert set(KINDS) == {"guidance", "seeds", "styles", "prompts", "compare", "token"}


# ----------------------------------------------------------------------------- command line


def run_cli(capsys, *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_cli_grid_prompts_file_end_to_end(capsys, tiny_model, tmp_path) -> None:
    prompts = tmp_path / "prompts.txt"
    prompts.write_text(
        "# two prompts\na photo of {token} {class_noun}\n\na {token} {class_noun} in the snow\n"
    )
    out = tmp_path / "grids" / "prompts.png"
    code, stdout, err = run_cli(
        capsys,
        "grid",
        "prompts",
        "--model",
        str(tiny_model("sd1")),
        "--prompts-file",
        str(prompts),
        "--class-noun",
        "cat",
        "--token",
        "zwx",
        "--seeds",
        "1",
        "2",
        "--steps",
        "2",
        "--width",
        "32",
        "--height",
        "32",
        "--quiet",
        "--output",
        str(out),
    )
    assert code == 0, err
    assert str(out) in stdout
    meta = json.loads(Image.open(out).info["boothkit"])
    assert meta["rows"] == ["a photo of zwx cat", "a zwx cat in the snow"] and meta["columns"] == [
        "seed 1",
        "seed 2",
    ]
    assert Image.open(out).size == (LABEL_W + 2 * CELL + 4, Image.open(out).height)


def test_cli_grid_compare_end_to_end(capsys, tiny_model, lora_run, tmp_path) -> None:
    out = tmp_path / "compare.png"
    code, _, err = run_cli(
        capsys,
        "grid",
        "compare",
        "--model",
        str(tiny_model("sd1")),
        "--row",
        "base=base",
        "--row",
        f"LoRA 0.5={lora_run}:0.5",
        "--prompt",
        "a photo of {token} dog",
        "--steps",
        "2",
        "--width",
        "32",
        "--height",
        "32",
        "--quiet",
        "--output",
        str(out),
    )
    assert code == 0, err
    meta = json.loads(Image.open(out).info["boothkit"])
    assert meta["rows"] == ["base", "LoRA 0.5"] and meta["columns"] == ["a photo of sks dog"]
    assert meta["cells"][1][0]["adapters"][0]["weight"] == 0.5


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["colours", "--prompt", "x"], "unknown grid kind 'colours'"),
        (["compare", "--row", "a=RUN:abc", "--prompt", "x"], "weight 'abc' is not a number"),
        (["prompts", "--prompts-file", "MISSING"], "does not exist"),
        (["seeds", "--prompt", "x", "--output", "grid.jpg"], "saved as PNG"),
    ],
)
def test_cli_grid_bad_input_exits_2(capsys, tmp_path, lora_run, args, needle) -> None:
    args = [a.replace("RUN", str(lora_run)).replace("MISSING", str(tmp_path / "missing.txt")) for a in args]
    code, _, err = run_cli(capsys, "grid", *args[:1], "--model", str(tmp_path / "no-model"), *args[1:])
    assert code == 2 and needle in err and "Traceback" not in err


def test_compare_grid_takes_textual_inversion_and_pivotal_runs(tiny_model, photos, tmp_path) -> None:
    """Runs with learned embeddings render in grids: their placeholder token takes the learned vectors."""
    from boothkit.cli import main as cli_main
    from boothkit.config import TrainConfig
    from boothkit.train import train
    from conftest import fast_settings

    model = tiny_model("sd1")
    runs = {}
    for method, token in (("ti", "sks"), ("pivotal", "zwx")):  # one pipeline holds both tokens
        cfg = TrainConfig(
            model=str(model),
            images=str(photos),
            output=str(tmp_path / method),
            class_noun="dog",
            method=method,
            token=token,
            **fast_settings(steps=2, ti_lr=0.05),
        )  # type: ignore[arg-type]
        runs[method] = train(cfg, progress=False, log=lambda s: None).output
    out = tmp_path / "grid.png"
    code = cli_main(
        [
            "grid",
            "compare",
            "--model",
            str(model),
            "--row",
            "base=base",
            "--row",
            f"ti={runs['ti']}",
            "--row",
            f"pivotal={runs['pivotal']}",
            "--prompt",
            "a photo of <sks> <zwx> dog",
            "--steps",
            "2",
            "--output",
            str(out),
        ]
    )
    assert code == 0 and out.is_file()


@pytest.mark.parametrize("family", ["sd1", "sdxl"])
def test_compare_rows_of_runs_that_learned_the_same_token(family, tiny_model, photos, tmp_path) -> None:
    """Two TI runs of <sks> with different settings, the usual comparison: each row renders exactly
    what its run renders alone, and one cell can't hold both."""
    from boothkit.adapters import parse_adapter
    from boothkit.config import TrainConfig
    from boothkit.pipelines import open_pipeline
    from boothkit.studies import Cell, Renderer, Sampling
    from boothkit.train import train
    from conftest import fast_settings

    model = tiny_model(family)
    runs = []
    for name, ti_lr in (("slow", 0.02), ("fast", 0.2)):
        cfg = TrainConfig(
            model=str(model),
            images=str(photos),
            output=str(tmp_path / name),
            class_noun="dog",
            method="ti",
            num_vectors=2,
            **fast_settings(steps=2, ti_lr=ti_lr),
        )  # type: ignore[arg-type]
        runs.append(parse_adapter(str(train(cfg, progress=False, log=lambda s: None).output)))
    sampling = Sampling(steps=2, guidance=5.0, width=32, height=32)
    prompt = "a photo of <sks> dog"
    renderer = Renderer.load(str(model))
    # Row order slow, fast, slow: the second visit must restore the first run's vectors.
    grid = [np.asarray(renderer.render(Cell(prompt, 0, 5.0, (run,)), sampling)) for run in (*runs, runs[0])]

    def alone(run) -> np.ndarray:
        pipe = open_pipeline(str(model), [run])
        return np.asarray(
            pipe(
                prompt,
                num_inference_steps=2,
                guidance_scale=5.0,
                width=32,
                height=32,
                generator=__import__("torch").Generator("cpu").manual_seed(0),
            ).images[0]
        )

    assert np.array_equal(grid[0], alone(runs[0])) and np.array_equal(grid[1], alone(runs[1]))
    assert np.array_equal(grid[2], grid[0]) and not np.array_equal(grid[0], grid[1])
    with pytest.raises(BoothkitError, match="both learned <sks>"):
        renderer.render(Cell(prompt, 0, 5.0, tuple(runs)), sampling)


def test_grid_prompts_use_the_runs_token_and_class_noun_unless_told(tiny_model, photos, tmp_path) -> None:
    """A run trained as "zwx cat": {token} and {class_noun} in a grid's prompts mean those words, as the
    token grid's default prompt does; --token / --class-noun still win."""
    from boothkit.config import TrainConfig
    from boothkit.studies import Sampling, StudyRequest, run_study
    from boothkit.train import train
    from conftest import fast_settings

    model = tiny_model("sd1")
    cfg = TrainConfig(
        model=str(model),
        images=str(photos),
        output=str(tmp_path / "run"),
        class_noun="cat",
        token="zwx",
        **fast_settings(steps=1),
    )  # type: ignore[arg-type]
    run = str(train(cfg, progress=False, log=lambda s: None).output)
    sampling = Sampling(steps=1, width=32, height=32)

    def prompts(**kw) -> list[str]:
        study = run_study(
            StudyRequest(kind="token", model=str(model), loras=[run], seeds=[0], sampling=sampling, **kw)
        )
        return [row[0].prompt for row in study.cells]

    assert prompts() == ["a photo of zwx cat", "a photo of cat"]
    assert prompts(token="sks", class_noun="dog") == ["a photo of sks dog", "a photo of dog"]
