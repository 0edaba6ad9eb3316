"""Morph animation: SLERP, the seamless loop schedule, rendering on tiny models, GIF/MP4 output, CLI."""

from __future__ import annotations

import math
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from boothkit.errors import BoothkitError
from boothkit.morph import (
    check_output,
    cycle_position,
    frame_count,
    frame_latents,
    gif_durations,
    keyframe_latents,
    morph,
    morph_seeds,
    render_frames,
    slerp,
    write_gif,
    write_mp4,
)
from conftest import run_cli

FAST = {"steps": 2, "width": 32, "height": 32}


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """32 px images gain nothing from intra-op threads, and on a busy shared CPU OpenMP's spinning
    threads make them 10-100x slower; one thread is also bit-for-bit deterministic."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def sd1(tiny_model):
    from boothkit.pipelines import Sampler

    return Sampler.open(str(tiny_model("sd1")))


def unit(v: torch.Tensor) -> torch.Tensor:
    return v / v.norm()


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"))


# ----------------------------------------------------------------------------- slerp


def test_slerp_endpoints_are_exact() -> None:
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(1, 4, 8, 8, generator=g), torch.randn(1, 4, 8, 8, generator=g)
    assert torch.equal(slerp(a, b, 0.0), a) and torch.equal(slerp(a, b, 1.0), b)
    assert slerp(a, b, 0.3).dtype == a.dtype and slerp(a, b, 0.3).shape == a.shape


def test_slerp_keeps_unit_vectors_on_the_sphere() -> None:
    g = torch.Generator().manual_seed(1)
    for _ in range(5):
        a, b = (
            unit(torch.randn(256, generator=g, dtype=torch.float64)),
            unit(torch.randn(256, generator=g, dtype=torch.float64)),
        )
        for t in (0.1, 0.25, 0.5, 0.9):
            assert slerp(a, b, t).norm().item() == pytest.approx(1.0, abs=1e-12)


def test_slerp_of_orthogonal_unit_vectors_at_half() -> None:
    a, b = torch.tensor([1.0, 0.0, 0.0]), torch.tensor([0.0, 1.0, 0.0])
    mid = slerp(a, b, 0.5)
    assert mid.norm().item() == pytest.approx(1.0, abs=1e-6)
    assert torch.allclose(mid, torch.tensor([1.0, 1.0, 0.0]) / math.sqrt(2))
    assert (0.5 * a + 0.5 * b).norm().item() == pytest.approx(math.sqrt(0.5))  # what lerp would lose
    # the angle moves uniformly with t
    assert torch.allclose(
        slerp(a, b, 1 / 3), torch.tensor([math.cos(math.pi / 6), math.sin(math.pi / 6), 0.0])
    )


def test_slerp_handles_parallel_opposite_and_zero_vectors() -> None:
    a = torch.tensor([1.0, 2.0, 3.0])
    for b in (a.clone(), a * (1 + 1e-7), 2 * a, -a, torch.zeros(3)):
        out = slerp(a, b, 0.5)
        assert torch.isfinite(out).all()
    assert torch.allclose(slerp(a, 2 * a, 0.5), 1.5 * a)  # parallel: the straight line
    with pytest.raises(ValueError, match="one shape"):
        slerp(a, torch.zeros(4), 0.5)


# ----------------------------------------------------------------------------- the loop schedule


def test_cycle_positions_visit_every_keyframe_and_wrap_exactly() -> None:
    n, k = 450, 5  # the tutorial's defaults: 15 s at 30 fps
    assert frame_count(15, 30) == n
    assert cycle_position(0, n, k) == (0, 1, 0.0)
    assert cycle_position(n, n, k) == (0, 1, 0.0)  # the frame after the last is the first
    assert cycle_position(n - 1, n, k)[:2] == (4, 0)  # the last segment goes back to the start
    hits = [i for i in range(n) if cycle_position(i, n, k)[2] == 0.0]
    assert hits == [0, 90, 180, 270, 360]
    assert [cycle_position(i, n, k)[0] for i in hits] == [0, 1, 2, 3, 4]
    # frames not divisible by keyframes: still uniform in time and still wrapping
    positions = [cycle_position(i, 7, 3) for i in range(8)]
    assert positions[0] == positions[7]
    assert [s + t for s, _, t in positions[:7]] == pytest.approx([i * 3 / 7 for i in range(7)])


def test_frame_latents_wrap_exactly_and_hit_the_keyframes() -> None:
    keys = keyframe_latents([3, 4, 5], (1, 4, 8, 8))
    first, after_last = frame_latents(keys, 6, [0, 6])
    assert torch.equal(first, after_last)
    at = frame_latents(keys, 6)
    assert torch.equal(at[2], keys[1]) and torch.equal(at[4], keys[2])
    assert not torch.equal(at[1], at[0])
    with pytest.raises(ValueError):
        frame_latents(keys[:1], 6)


def test_keyframes_are_the_noise_generate_starts_from(sd1) -> None:
    """Keyframe s renders the image `generate --seed s` makes (same noise, same embedding)."""
    latent = keyframe_latents([7], (1, 4, 8, 8))
    frame = render_frames(sd1.family, sd1.pipe, "a photo of sks dog", latent, **FAST)[0]
    direct = sd1.pipe(
        "a photo of sks dog",
        num_inference_steps=2,
        width=32,
        height=32,
        generator=torch.Generator().manual_seed(7),
    ).images[0]
    assert np.array_equal(pixels(frame), pixels(direct))


def test_rendered_loop_is_seamless(sd1) -> None:
    n = 4
    keys = keyframe_latents([0, 1], (1, 4, 8, 8))
    frames = render_frames(sd1.family, sd1.pipe, "a sks dog", frame_latents(keys, n, range(n + 1)), **FAST)
    assert np.array_equal(pixels(frames[0]), pixels(frames[n]))
    assert not np.array_equal(pixels(frames[0]), pixels(frames[1]))
    batched = render_frames(sd1.family, sd1.pipe, "a sks dog", frame_latents(keys, n), batch_size=3, **FAST)
    assert all(
        np.abs(pixels(x).astype(int) - pixels(y)).max() <= 1 for x, y in zip(frames, batched, strict=False)
    )


# ----------------------------------------------------------------------------- output


def test_gif_durations_keep_real_time() -> None:
    d = gif_durations(450, 30)
    assert sum(d) == 15000 and set(d) == {30, 40}
    assert gif_durations(8, 4) == [250] * 8
    assert all(x % 10 == 0 for x in gif_durations(37, 24))


def test_write_gif_loops_with_every_frame(tmp_path) -> None:
    frames = [Image.new("RGB", (16, 16), (20 * i, 100, 200 - 20 * i)) for i in range(6)]
    path = write_gif(frames, tmp_path / "a.gif", fps=4)
    gif = Image.open(path)
    assert gif.n_frames == 6 and gif.info["loop"] == 0 and gif.info["duration"] == 250
    assert not list(tmp_path.glob(".*.tmp"))


def test_output_checks(tmp_path, monkeypatch) -> None:
    import importlib.util

    assert check_output(tmp_path / "a.GIF", 30).suffix == ".GIF"
    with pytest.raises(BoothkitError, match="write a .gif or .mp4"):
        check_output(tmp_path / "a.avi", 30)
    with pytest.raises(BoothkitError, match="--fps 60"):
        check_output(tmp_path / "a.gif", 60)
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "imageio_ffmpeg" else real(name, *a)
    )
    with pytest.raises(BoothkitError, match="imageio-ffmpeg") as err:
        check_output(tmp_path / "a.mp4", 30)
    assert ".gif" in (err.value.hint or "")


def test_write_mp4_feeds_ffmpeg_every_frame(tmp_path, monkeypatch) -> None:
    """imageio-ffmpeg is optional; a stand-in checks the protocol (size, -f mp4, one send per frame)."""
    calls: dict[str, object] = {"frames": 0}

    def write_frames(path, size, **kw):
        calls.update(path=path, size=size, **kw)
        with open(path, "wb") as fh:  # like imageio-ffmpeg: send(None) runs to the first yield
            while True:
                try:
                    frame = yield
                except GeneratorExit:
                    return
                fh.write(bytes(frame))
                calls["frames"] = int(calls["frames"]) + 1  # type: ignore[call-overload]

    monkeypatch.setitem(sys.modules, "imageio_ffmpeg", types.SimpleNamespace(write_frames=write_frames))
    frames = [Image.new("RGB", (16, 8), (i, i, i)) for i in range(5)]
    path = write_mp4(frames, tmp_path / "a.mp4", fps=12)
    assert path.stat().st_size == 5 * 16 * 8 * 3 and calls["frames"] == 5
    assert calls["size"] == (16, 8) and calls["fps"] == 12.0 and calls["output_params"] == ["-f", "mp4"]


def test_write_mp4_with_real_ffmpeg_reads_back_every_frame(tmp_path) -> None:
    """imageio-ffmpeg (the `video` extra, installed with `dev`) writes an H.264 MP4 that decodes to
    the same number of frames, size and (within codec loss) colours."""
    imageio_ffmpeg = pytest.importorskip("imageio_ffmpeg")
    frames = [Image.new("RGB", (32, 16), (40 * i, 200 - 40 * i, 100)) for i in range(5)]
    path = write_mp4(frames, tmp_path / "loop.mp4", fps=10)
    reader = imageio_ffmpeg.read_frames(str(path))
    meta = next(reader)
    assert tuple(meta["size"]) == (32, 16) and meta["fps"] == 10.0
    decoded = [np.frombuffer(f, dtype=np.uint8).reshape(16, 32, 3) for f in reader]
    assert len(decoded) == 5
    for frame, original in zip(decoded, frames, strict=True):
        assert np.abs(frame.astype(int) - pixels(original).astype(int)).mean() < 12
    assert not list(tmp_path.glob(".*"))  # no temporary file left beside it


# ----------------------------------------------------------------------------- end to end


def test_morph_writes_a_looping_gif_sdxl(tiny_model, tmp_path) -> None:
    result = morph(
        str(tiny_model("sdxl")),
        "a photo of sks dog",
        seeds=[0, 1],
        duration=2,
        fps=2,
        guidance=3.0,
        output=tmp_path / "x.gif",
        progress=False,
        **FAST,
    )
    gif = Image.open(result.path)
    assert result.n_frames == 4 and gif.n_frames == 4 and gif.info["loop"] == 0 and gif.size == (32, 32)


def test_morph_rejects_bad_settings_before_loading(tmp_path) -> None:
    model = str(tmp_path / "no-model")
    with pytest.raises(BoothkitError, match="at least two keyframes"):
        morph(model, "x", seeds=[1], output=tmp_path / "a.gif")
    with pytest.raises(BoothkitError, match="fewer than the 5 keyframes"):
        morph(model, "x", seeds=[1, 2, 3, 4, 5], duration=1, fps=4, output=tmp_path / "a.gif")
    with pytest.raises(BoothkitError, match="must both be positive"):
        morph(model, "x", seeds=[1, 2], duration=0, output=tmp_path / "a.gif")
    assert morph_seeds(10, 3) == [10, 11, 12] and morph_seeds(0, 5, [4, 2]) == [4, 2]


def test_cli_morph_end_to_end(capsys, tiny_model, tmp_path) -> None:
    out = tmp_path / "anim" / "loop.gif"
    code, stdout, err = run_cli(
        capsys,
        "morph",
        "--model",
        str(tiny_model("sd1")),
        "--prompt",
        "a photo of sks dog",
        "--keyframes",
        "3",
        "--seed",
        "4",
        "--fps",
        "3",
        "--duration",
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
    assert "6 frames" in stdout and "keyframe seeds 4 5 6" in stdout
    gif = Image.open(out)
    assert gif.n_frames == 6 and gif.info["loop"] == 0


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--keyframes", "1"], "at least two keyframes"),
        (["--output", "a.webm"], "write a .gif or .mp4"),
        (["--lora", "RUN:abc"], "weight 'abc' is not a number"),
        (["--scheduler", "fast"], "--scheduler 'fast' is not known"),
    ],
)
def test_cli_morph_bad_input_exits_2(capsys, tmp_path, args, needle) -> None:
    args = [a.replace("RUN", str(tmp_path)) for a in args]
    code, _, err = run_cli(
        capsys,
        "morph",
        "--model",
        str(tmp_path / "no-model"),
        "--prompt",
        "x",
        "--output",
        str(Path(tmp_path, "m.gif")),
        *args,
    )
    assert code == 2 and needle in err and "Traceback" not in err
