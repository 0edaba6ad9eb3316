import dataclasses
from pathlib import Path

import pytest

from boothkit.families import load_model
from boothkit.prior import BankKey, bank_dir, ensure_class_images

KEY = BankKey(
    model="abc",
    prompt="a photo of dog",
    negative_prompt="",
    resolution=32,
    sampler="PNDMScheduler",
    steps=2,
    guidance=7.5,
    seed=0,
)


@pytest.mark.parametrize(
    "change",
    [
        {"model": "other"},
        {"prompt": "a photo of cat"},
        {"negative_prompt": "blurry"},
        {"resolution": 64},
        {"sampler": "EulerDiscreteScheduler"},
        {"steps": 3},
        {"guidance": 5.0},
        {"seed": 1},
    ],
)
def test_every_setting_changes_the_bank_key(change) -> None:
    assert dataclasses.replace(KEY, **change).digest() != KEY.digest()


class CountingPipe:
    """Wraps a pipeline and counts the images it is asked for."""

    def __init__(self, pipe) -> None:
        self.pipe, self.images = pipe, 0

    def __call__(self, prompts, **kw):
        self.images += len(prompts)
        return self.pipe(prompts, **kw)


def test_bank_generates_once_resumes_and_is_deterministic(tiny_model, tmp_path: Path) -> None:
    model = load_model(str(tiny_model("sd1")))
    pipe = model.pipeline()
    pipe.set_progress_bar_config(disable=True)
    key = dataclasses.replace(KEY, model=model.source.fingerprint)
    counting = CountingPipe(pipe)
    paths = ensure_class_images(counting, key, 3, root=tmp_path, batch_size=2, progress=False)
    assert counting.images == 3 and all(p.is_file() for p in paths)
    first = [p.read_bytes() for p in paths]

    # A second run reuses the bank: nothing is generated.
    again = ensure_class_images(counting, key, 3, root=tmp_path, batch_size=2, progress=False)
    assert counting.images == 3 and again == paths

    # An interrupted generation resumes: only the missing image's block (images 0 and 1) is
    # recomputed, only image 1 is written, and it is byte-identical to the first run's.
    paths[1].unlink()
    before = paths[0].stat().st_mtime_ns
    ensure_class_images(counting, key, 3, root=tmp_path, batch_size=2, progress=False)
    assert counting.images == 5
    assert paths[0].stat().st_mtime_ns == before
    assert [p.read_bytes() for p in paths] == first

    # Asking for more adds only the new ones (blocks [2, 3] and [4]; image 2 is kept as it was);
    # a different setting uses a different folder.
    more = ensure_class_images(counting, key, 5, root=tmp_path, batch_size=2, progress=False)
    assert counting.images == 8 and more[2].read_bytes() == first[2] and more[4].is_file()
    other = dataclasses.replace(key, guidance=3.0)
    assert bank_dir(other, tmp_path) != bank_dir(key, tmp_path)


def test_several_prompts_are_used_in_turn_and_one_prompt_keeps_its_digest(tiny_model, tmp_path: Path) -> None:
    # One prompt: the digest is the one banks were made under before several prompts existed.
    assert KEY.prompts() == ["a photo of dog"] and KEY.prompt_of(5) == "a photo of dog"
    model = load_model(str(tiny_model("sd1")))
    pipe = model.pipeline()
    pipe.set_progress_bar_config(disable=True)
    asked: list[str] = []

    def recording(prompts, **kw):
        asked.extend(prompts)
        return pipe(prompts, **kw)

    key = dataclasses.replace(
        KEY, model=model.source.fingerprint, prompt="a photo of dog on grass\na photo of dog in snow"
    )
    paths = ensure_class_images(recording, key, 3, root=tmp_path, batch_size=2, progress=False)
    assert asked == ["a photo of dog on grass", "a photo of dog in snow", "a photo of dog on grass"]
    assert [key.prompt_of(i) for i in range(3)] == asked and len(paths) == 3
    assert key.digest() != dataclasses.replace(key, prompt="a photo of dog on grass").digest()
