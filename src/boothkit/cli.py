"""The `boothkit` command: parse, call the public functions, print. Nothing else lives here.

User errors (BoothkitError) print one message and exit 2 with no traceback; `--debug` shows it.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import traceback
import warnings
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from boothkit import __version__
from boothkit.config import METHODS, REQUIRED, SECTIONS, TrainConfig, build_config, coerce_values, load_toml
from boothkit.data.images import check_folder, parse_color
from boothkit.errors import BoothkitError
from boothkit.files import CONFIG_FILE, LORA_FILE
from boothkit.flags import Number, add_flags, given
from boothkit.io import environment_hint
from boothkit.toyworld.settings import SECTIONS as PRETRAIN_SECTIONS
from boothkit.toyworld.settings import PretrainSettings


def _quiet_libraries() -> None:
    # Library chatter (loading bars, optional-backend notices) buries what boothkit says.
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", message=".*torchvision.*")


def _disable_load_bars() -> None:
    try:
        import diffusers.utils.logging as dlog
        import transformers.utils.logging as tlog

        dlog.disable_progress_bar()
        tlog.disable_progress_bar()
    except ImportError:  # pragma: no cover
        pass


def _train(ns: argparse.Namespace) -> int:
    file_values = load_toml(ns.config) if ns.config else {}
    resume = getattr(ns, "resume", None)
    if resume and not ns.config:
        # `--resume RUN` alone continues the run with the settings it was started with.
        run_dir = Path(getattr(ns, "output", None) or resume) if resume == "latest" else Path(resume)
        if not (run_dir / CONFIG_FILE).is_file():
            raise BoothkitError(
                f"--resume {resume}: {run_dir} is not a boothkit run folder (no {CONFIG_FILE})"
            )
        file_values = load_toml(run_dir / CONFIG_FILE)
        file_values.pop("resume", None)
        if resume != "latest":
            file_values["output"] = str(run_dir)
    flag_values = coerce_values(given(ns, TrainConfig), source="flags")
    config = build_config(file_values, flag_values)
    _disable_load_bars()
    from boothkit.outputs import summary_text
    from boothkit.train import train

    result = train(config, progress=not ns.quiet)
    print(summary_text(result, config))
    return 0


def _generate(ns: argparse.Namespace) -> int:
    _disable_load_bars()
    from boothkit.adapters import missing_tokens, parse_adapter
    from boothkit.generate import generate

    adapters = [parse_adapter(s, allow_pickle=ns.allow_pickle) for s in ns.lora or []]
    for note in missing_tokens(ns.prompt, adapters):
        print(f"warning: {note}", file=sys.stderr)
    paths = generate(
        ns.model,
        ns.prompt,
        adapters=adapters,
        negative=ns.negative,
        seed=ns.seed,
        num_images=ns.num_images,
        steps=ns.steps,
        guidance=ns.guidance,
        width=ns.width,
        height=ns.height,
        scheduler=ns.scheduler,
        output=ns.output,
        device=ns.device,
        allow_pickle=ns.allow_pickle,
        model_config=ns.model_config,
        progress=not ns.quiet,
    )
    for p in paths:
        print(p)
    return 0


def _check(ns: argparse.Namespace) -> int:
    folder = Path(ns.folder).expanduser()
    if not folder.is_dir():
        raise BoothkitError(f"{folder} is not a folder", hint="pass the folder that holds your photos")
    report = check_folder(folder, resolution=ns.resolution, alpha_background=parse_color(ns.alpha_background))
    if ns.json:
        print(json.dumps(report.to_json(), indent=2, ensure_ascii=False))
    else:
        print(report.format())
    return 2 if report.rejected() else 0


def _base_model_for(source: str, given: str | None) -> str | None:
    """The base model to verify against: --model, else the one the run was trained on (its config.toml)."""
    if given:
        return given
    run = Path(source)
    run = run if run.is_dir() else run.parent
    if (run / CONFIG_FILE).is_file():
        return str(load_toml(run / CONFIG_FILE).get("model") or "") or None
    return None


def _export(ns: argparse.Namespace) -> int:
    _disable_load_bars()
    from boothkit.export import embeddings_note, embeddings_path, export_lora, merge_lora, run_embeddings
    from boothkit.families import resolve_model

    base = _base_model_for(ns.source, ns.model)
    base_dir = resolve_model(base) if base else None
    if base_dir is not None and base_dir.is_file():
        raise BoothkitError(
            f"--model {base}: export verifies against a diffusers folder or hub id, not a single file"
        )
    if ns.format == "merged":
        if base_dir is None:
            raise BoothkitError(
                "--format merged needs the base model", hint="pass --model (or export a run folder)"
            )
        source = Path(ns.source)
        lora = source / LORA_FILE if source.is_dir() else source
        out = merge_lora(base_dir, lora, scale=ns.scale, output=Path(ns.output), single_file=ns.single_file)
        print(f"merged {lora} at scale {ns.scale} into {base}: {out}")
        if run_embeddings(lora) is not None:
            print(
                f"  {embeddings_note(embeddings_path(out))}"
                if ns.single_file
                else "  the run's learned token is in the merged model's tokenizer and text encoder"
            )
        return 0
    report = export_lora(Path(ns.source), format=ns.format, output=Path(ns.output), base_model_dir=base_dir)
    print(report.format())
    return 0 if report.ok else 1


def _demo(ns: argparse.Namespace) -> int:
    _disable_load_bars()
    from boothkit.demo import run_demo

    run_demo(ns.output, subject=ns.subject, steps=ns.steps, progress=not ns.quiet)
    return 0


def _toyworld_pretrain(ns: argparse.Namespace) -> int:
    _disable_load_bars()
    from boothkit.toyworld.curriculum import CURRICULA, pretrain_curriculum
    from boothkit.toyworld.pretrain import pretrain

    settings = PretrainSettings(**given(ns, PretrainSettings))
    if ns.curriculum:
        pretrain_curriculum(ns.output, CURRICULA[ns.curriculum], settings)
        return 0
    pretrain(ns.output, settings)
    return 0


def _toyworld_refine(ns: argparse.Namespace) -> int:
    _disable_load_bars()
    from boothkit.toyworld.pretrain import check_share, refine_model_decoder

    model = Path(ns.model)
    if not (model / "vae" / "config.json").is_file():
        raise BoothkitError(
            f"--model {model}: no vae/ folder here", hint="pass a folder written by toyworld pretrain"
        )
    check_share("--multicolor-share", ns.multicolor_share)
    refine_model_decoder(
        model,
        ns.steps,
        lr=ns.lr,
        object_weight=ns.object_weight,
        multicolor_share=ns.multicolor_share,
        every=ns.every,
    )
    return 0


def _toyworld_bench(ns: argparse.Namespace) -> int:
    _disable_load_bars()
    from boothkit.toyworld.bench import BenchSettings, run_bench

    settings = BenchSettings.quick() if ns.quick else BenchSettings()
    changes: dict[str, Any] = {"model": ns.model or "", "device": ns.device}
    if ns.subjects:
        changes["subjects"] = tuple(ns.subjects)
    if ns.methods:
        changes["methods"] = tuple(ns.methods)
    if ns.prior != "both":
        changes["priors"] = (ns.prior == "yes",)
    if ns.steps is not None:
        changes["steps"] = ns.steps
    if ns.seeds is not None:
        changes["seeds"] = tuple(range(ns.seeds))
    if ns.class_images is not None:
        changes["class_images"] = ns.class_images
    if ns.no_captions:
        changes["captions"] = False
    if ns.token is not None:
        changes["token"] = ns.token
    run_bench(ns.output, replace(settings, **changes), progress=not ns.quiet)
    print(f"wrote {ns.output}/bench.md, bench.json, index.html")
    return 0


def _grid(ns: argparse.Namespace) -> int:
    _disable_load_bars()
    from boothkit.studies import Sampling, StudyRequest, run_study

    request = StudyRequest(
        kind=ns.kind,
        model=ns.model,
        loras=ns.lora or [],
        prompts=ns.prompt or [],
        prompts_file=ns.prompts_file,
        prompt_set=ns.prompt_set,
        rows=ns.row or [],
        token=ns.token,
        class_noun=ns.class_noun,
        seed=ns.seed,
        seeds=ns.seeds,
        num_seeds=ns.num_seeds,
        values=ns.values,
        styles=ns.styles,
        style_template=ns.style_template,
        sampling=Sampling(ns.negative, ns.steps, ns.guidance, ns.width, ns.height),
        scheduler=ns.scheduler,
        device=ns.device,
        allow_pickle=ns.allow_pickle,
        model_config=ns.model_config,
    )
    output = ns.output or f"grid-{ns.kind}.png"
    if not str(output).lower().endswith(".png"):  # before rendering, not after
        raise BoothkitError(
            f"--output {output}: a study grid is saved as PNG", hint="give the file a .png name"
        )
    study = run_study(request, progress=not ns.quiet)
    print(study.save(output))
    return 0


def _morph(ns: argparse.Namespace) -> int:
    _disable_load_bars()
    from boothkit.adapters import parse_adapter
    from boothkit.morph import morph, morph_seeds

    adapters = [parse_adapter(s, allow_pickle=ns.allow_pickle) for s in ns.lora or []]
    result = morph(
        ns.model,
        ns.prompt,
        adapters=adapters,
        seeds=morph_seeds(ns.seed, ns.keyframes, ns.seeds),
        duration=ns.duration,
        fps=ns.fps,
        negative=ns.negative,
        steps=ns.steps,
        guidance=ns.guidance,
        width=ns.width,
        height=ns.height,
        scheduler=ns.scheduler,
        device=ns.device,
        output=ns.output,
        batch_size=ns.batch_size,
        allow_pickle=ns.allow_pickle,
        model_config=ns.model_config,
        progress=not ns.quiet,
    )
    seeds = " ".join(str(s) for s in result.seeds)
    print(f"{result.path}  ({result.n_frames} frames at {result.fps:g} fps, keyframe seeds {seeds})")
    return 0


def _number_flag(q: argparse.ArgumentParser, flag: str, default: float, help: str, **bounds: Any) -> None:
    """A number flag, parsed and checked (finite, within ``bounds``) by the shared :class:`Number`;
    its default is the valid value its messages suggest."""
    q.add_argument(flag, type=Number(example=default, **bounds), default=default, help=help)


def _sampling_flags(
    q: argparse.ArgumentParser,
    *,
    prompt: str | None,
    seed: str = "seed of the first image; image k uses SEED + k (default 0)",
) -> None:
    """The flags every command that samples a base model shares (generate, grid, morph)."""
    required = q.add_argument_group("required")
    required.add_argument(
        "--model", required=True, help="base model: hub id, diffusers folder or .safetensors"
    )
    if prompt is not None:
        required.add_argument("--prompt", required=True, help=prompt)
    q.add_argument(
        "--model-config",
        default=None,
        help="a single-file --model's configs: the diffusers folder or hub id it was made from",
    )
    q.add_argument(
        "--lora",
        action="append",
        help="run folder, checkpoint folder or .safetensors, optionally :weight (repeatable)",
    )
    q.add_argument("--negative", default="", help="negative prompt")
    q.add_argument("--seed", type=int, default=0, help=seed)
    q.add_argument("--steps", type=int, default=30, help="denoising steps (default 30)")
    q.add_argument(
        "--guidance",
        type=Number(at_least=0, example=7.5),
        default=None,
        help="guidance scale (default: the model's: 7.5 for SD, 3.5 for Flux.1, whose guidance is distilled)",
    )
    q.add_argument(
        "--width", type=int, default=None, help="image width in pixels (default: the model's size)"
    )
    q.add_argument(
        "--height", type=int, default=None, help="image height in pixels (default: the model's size)"
    )
    q.add_argument(
        "--scheduler", default=None, help="dpm++2m, euler, euler_a, ddim, pndm (default: the model's)"
    )
    q.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default cpu)")
    q.add_argument(
        "--allow-pickle",
        action="store_true",
        help="allow .ckpt/.pt/.bin files, loaded with torch.load(weights_only=True)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="boothkit",
        description="DreamBooth for Stable Diffusion 1.x, 2.x, SDXL and Flux.1: LoRA with prior preservation.",
    )
    parser.add_argument("--version", action="version", version=f"boothkit {__version__}")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", help="show tracebacks")
    common.add_argument("--quiet", action="store_true", help="no progress bars")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser(
        "train",
        parents=[common],
        help="train a personalised model",
        usage="boothkit train --model MODEL --images DIR --output DIR [options]",
        description="Train DreamBooth-LoRA on a folder of photos. Every flag can also come from --config.",
    )
    p.add_argument("--config", metavar="TOML", help="TOML file with settings (flags override it)")
    add_flags(p, TrainConfig, sections=SECTIONS, required=REQUIRED)
    p.set_defaults(func=_train)

    g = sub.add_parser(
        "generate",
        parents=[common],
        help="generate images with a base model and LoRAs",
        description="Images of a prompt from a base model with any adapters; image k uses seed + k, and "
        "each PNG carries the parameters that made it.",
    )
    _sampling_flags(g, prompt="the prompt; name the run's token for the subject (e.g. 'a photo of sks dog')")
    g.add_argument(
        "--num-images", type=int, default=1, help="how many images, seeds SEED, SEED+1, ... (default 1)"
    )
    g.add_argument("--output", default="outputs", help="folder for the images (default: outputs)")
    g.set_defaults(func=_generate)

    c = sub.add_parser("check", parents=[common], help="check a folder of photos before training")
    c.add_argument("folder", help="the folder of photos to check (it is only read)")
    c.add_argument("--json", action="store_true", help="machine-readable report")
    c.add_argument(
        "--resolution",
        type=int,
        default=512,
        help="the training resolution photos are judged for (default 512)",
    )
    c.add_argument(
        "--alpha-background",
        default="white",
        help="colour transparent areas are composited onto (default white)",
    )
    c.set_defaults(func=_check)

    e = sub.add_parser(
        "export",
        parents=[common],
        help="convert a LoRA (kohya <-> diffusers) or merge it into its base",
        description="Convert a run's LoRA to the kohya/A1111/ComfyUI layout and back, verified numerically "
        "against the base model, or merge it into the base model.",
    )
    e.add_argument("source", help="run folder or LoRA .safetensors (either layout)")
    required = e.add_argument_group("required")
    required.add_argument(
        "--format",
        required=True,
        choices=["kohya", "diffusers", "merged"],
        help="kohya (A1111, ComfyUI), diffusers, or merged into the base model",
    )
    required.add_argument("--output", required=True, help="output .safetensors file or folder")
    e.add_argument("--model", default=None, help="base model to verify against (default: the run's)")
    _number_flag(e, "--scale", 1.0, "LoRA scale for --format merged (default 1.0)")
    e.add_argument(
        "--single-file", action="store_true", help="--format merged: one .safetensors for A1111/ComfyUI"
    )
    e.set_defaults(func=_export)

    d = sub.add_parser(
        "demo", parents=[common], help="the whole pipeline offline on the toy world, in about a minute"
    )
    d.add_argument(
        "--output",
        default="runs/demo",
        help="folder to write (default runs/demo; if taken, a numbered one beside it)",
    )
    d.add_argument(
        "--subject", default="target_circle", help="toy-world subject to learn (default target_circle)"
    )
    d.add_argument("--steps", type=int, default=400, help="LoRA training steps (default 400)")
    d.set_defaults(func=_demo)

    tw = sub.add_parser("toyworld", help="the toy world: pretrain its base model, run the DreamBooth bench")
    tw_sub = tw.add_subparsers(dest="toyworld_command", required=True)
    tp = tw_sub.add_parser("pretrain", parents=[common], help="pretrain the toy base model (SD-1 layout)")
    tp.add_argument("--output", required=True, help="model folder to write")
    tp.add_argument(
        "--curriculum",
        choices=["v4"],
        default=None,
        help="run a recorded sequence of phases (v4: the shipped model from scratch); "
        "each phase's settings replace the same flags",
    )
    add_flags(tp, PretrainSettings, sections=PRETRAIN_SECTIONS)
    tp.set_defaults(func=_toyworld_pretrain)
    tr = tw_sub.add_parser(
        "refine-decoder",
        parents=[common],
        help="train only the VAE decoder of a toy model folder (encoder frozen), in place",
    )
    tr.add_argument("--model", required=True, help="toy model folder (written by toyworld pretrain)")
    _number_flag(tr, "--steps", 1000, "decoder steps (default 1000)", above=0, integer=True)
    _number_flag(tr, "--lr", 5e-4, "learning rate (default 5e-4)", above=0)
    _number_flag(
        tr,
        "--object-weight",
        10.0,
        "extra loss weight of the object's pixels and their rim (default 10: they weigh 11)",
        at_least=0,
    )
    _number_flag(  # its range is check_share's, with a share's own message
        tr,
        "--multicolor-share",
        0.0,
        "share of training objects painted in several colours (never a subject's look)",
    )
    _number_flag(tr, "--every", 100, "evaluate (and keep the best) every N steps", above=0, integer=True)
    tr.set_defaults(func=_toyworld_refine)
    tb = tw_sub.add_parser("bench", parents=[common], help="DreamBooth methods measured on the toy world")
    tb.add_argument("--output", required=True, help="folder for bench.json, bench.md, grids, index.html")
    tb.add_argument("--model", default=None, help="base model (default: the shipped toy model)")
    tb.add_argument("--subjects", nargs="+", default=None, help="subjects (default: the benchmark subjects)")
    tb.add_argument(
        "--methods",
        nargs="+",
        choices=METHODS,
        default=None,
        help="methods to train (default: all four; --quick: lora)",
    )
    tb.add_argument("--prior", choices=("both", "yes", "no"), default="both", help="prior preservation runs")
    tb.add_argument("--steps", type=int, default=None, help="training steps for every method")
    tb.add_argument("--seeds", type=int, default=None, help="seeds per prompt")
    tb.add_argument(
        "--class-images",
        dest="class_images",
        type=int,
        default=None,
        help="class images for prior preservation (default 100; --quick: 8)",
    )
    tb.add_argument(
        "--no-captions",
        action="store_true",
        help="one prompt for every instance photo and every class image (the protocol before 2026-12-05)",
    )
    tb.add_argument("--token", default=None, help="the identifier the subject is trained on (default: sks)")
    tb.add_argument("--quick", action="store_true", help="1 subject, LoRA with prior, few steps: a smoke run")
    tb.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    tb.set_defaults(func=_toyworld_bench)

    gr = sub.add_parser(
        "grid",
        parents=[common],
        help="one labelled PNG that studies guidance, seeds, styles, prompts, models or the token",
        description=(
            "KIND is guidance (guidance scales), seeds (one prompt over many seeds), styles (the subject "
            "in artistic styles), prompts (a prompt file, e.g. the DreamBooth prompts_and_classes.txt), "
            "compare (--row models/LoRAs over prompts at fixed seeds) or token (with vs without the "
            "identifier). Each cell is seeded like `boothkit generate`, so any cell can be reproduced."
        ),
    )
    gr.add_argument("kind", metavar="KIND", help="guidance, seeds, styles, prompts, compare or token")
    _sampling_flags(gr, prompt=None, seed="the first seed (default 0)")
    gr.add_argument(
        "--prompt", action="append", help="prompt; {token} and {class_noun} are filled in (repeatable)"
    )
    gr.add_argument("--output", default=None, help="PNG file (default: grid-KIND.png)")
    gr.add_argument("--seeds", type=int, nargs="+", default=None, help="exact seeds (default: from --seed)")
    gr.add_argument(
        "--num-seeds",
        type=int,
        default=None,
        help="consecutive seeds from --seed (default: 8 for seeds, 4 for token, 1 otherwise)",
    )
    gr.add_argument(
        "--values",
        type=Number(at_least=0, example=7.5),
        nargs="+",
        default=None,
        help="guidance: scales (default 1.5 3 7.5 12 20)",
    )
    gr.add_argument("--styles", nargs="+", default=None, help="styles: the styles (default: nine built in)")
    gr.add_argument(
        "--style-template", default="{prompt}, {style} style", help="styles: how a style joins the prompt"
    )
    gr.add_argument(
        "--prompts-file",
        default=None,
        help="prompts/compare: one prompt per line, or the DreamBooth prompts_and_classes.txt",
    )
    gr.add_argument(
        "--prompt-set",
        default=None,
        help="which list of a DreamBooth-style file: object or live (default: live for dog/cat, else the first)",
    )
    gr.add_argument(
        "--row", action="append", help="compare: LABEL=SPEC, SPEC `base` or LoRAs joined by + (repeatable)"
    )
    gr.add_argument(
        "--token", default=None, help="identifier token for {token} (default: the runs', else sks)"
    )
    gr.add_argument(
        "--class-noun", default=None, help="class noun for {class_noun}, e.g. dog (default: the runs')"
    )
    gr.set_defaults(func=_grid)

    mo = sub.add_parser(
        "morph",
        parents=[common],
        help="a seamless looping GIF/MP4 morphing between the images of several seeds",
        description=(
            "Keyframes are the starting noise of K seeds; frames in between start from their spherical "
            "interpolation and go round back to the first. Defaults: 5 keyframes, 15 s at 30 fps = 450 "
            "frames. For a quick look: --fps 4 --duration 2 --steps 10."
        ),
    )
    _sampling_flags(mo, prompt="the prompt every frame draws", seed="the first keyframe seed (default 0)")
    mo.add_argument(
        "--seeds", type=int, nargs="+", default=None, help="keyframe seeds (default: from --seed)"
    )
    mo.add_argument(
        "--keyframes", type=int, default=5, help="keyframes from --seed when --seeds is not given"
    )
    _number_flag(mo, "--duration", 15.0, "loop length in seconds (default 15)", above=0)
    _number_flag(mo, "--fps", 30.0, "frames per second (default 30)", above=0)
    mo.add_argument("--batch-size", type=int, default=1, help="frames denoised together (GPU)")
    mo.add_argument("--output", default="morph.gif", help=".gif, or .mp4 with imageio-ffmpeg installed")
    mo.set_defaults(func=_morph)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    _quiet_libraries()
    parser = build_parser()
    ns = parser.parse_args(argv)
    try:
        return int(ns.func(ns))
    except BoothkitError as e:
        if ns.debug:
            traceback.print_exc()
        print(f"error: {e.message}", file=sys.stderr)
        if e.hint:
            print(f"  hint: {e.hint}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except OSError as e:  # the environment's fault (permissions, a full disk, a loop of links), not a bug
        if ns.debug:
            traceback.print_exc()
        where = f": {e.filename}" if e.filename else ""
        print(f"error: {e.strerror or e}{where}", file=sys.stderr)
        print(f"  hint: {environment_hint(e)}", file=sys.stderr)
        return 2
    except Exception as e:  # an unexpected failure: say what, point at --debug
        if ns.debug:
            traceback.print_exc()
        else:
            print(f"error: {type(e).__name__}: {e}", file=sys.stderr)
            print("  (run again with --debug for the traceback, and please report it)", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
