"""The `boothkit` command: parse, call the public functions, print. Nothing else lives here.

User errors (BoothkitError) print one message and exit 2 with no traceback; `--debug` shows it.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import traceback
from collections.abc import Sequence
from typing import Any, Literal, get_args, get_origin

from boothkit.errors import BoothkitError


def _quiet_libraries() -> None:
    # Library chatter (loading bars, optional-backend notices) buries what boothkit says.
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import warnings

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


# ----------------------------------------------------------------------------- train flags from the config schema


def _add_config_flags(parser: argparse.ArgumentParser) -> None:
    from boothkit.config import TrainConfig, field_help, field_types, flag_name

    types = field_types()
    for f in dataclasses.fields(TrainConfig):
        annotation = types[f.name]
        flag = f"--{flag_name(f.name)}"
        default = f.default if f.default is not dataclasses.MISSING else None
        help_text = field_help(f) + (f" (default: {default})" if default not in (None, "", ()) else "")
        kwargs: dict[str, Any] = {"dest": f.name, "default": argparse.SUPPRESS, "help": help_text}
        args = get_args(annotation)
        if args and type(None) in args:
            annotation = next(a for a in args if a is not type(None))
            args = get_args(annotation)
        if annotation is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, **kwargs)
        elif get_origin(annotation) is Literal:
            parser.add_argument(flag, choices=list(args), **kwargs)
        elif get_origin(annotation) is tuple:
            parser.add_argument(flag, nargs="+", type=args[0], metavar=f.name.upper().rstrip("S"), **kwargs)
        else:
            parser.add_argument(flag, type=annotation, **kwargs)


def _train(ns: argparse.Namespace) -> int:
    from boothkit.config import build_config, coerce_values, load_toml

    file_values = load_toml(ns.config) if ns.config else {}
    resume = getattr(ns, "resume", None)
    if resume and not ns.config:
        # `--resume RUN` alone continues the run with the settings it was started with.
        from pathlib import Path

        run_dir = Path(getattr(ns, "output", None) or resume) if resume == "latest" else Path(resume)
        if not (run_dir / "config.toml").is_file():
            raise BoothkitError(f"--resume {resume}: {run_dir} is not a boothkit run folder (no config.toml)")
        file_values = load_toml(run_dir / "config.toml")
        file_values.pop("resume", None)
        if resume != "latest":
            file_values["output"] = str(run_dir)
    reserved = {"config", "debug", "command", "func", "quiet"}
    flag_values = {k: v for k, v in vars(ns).items() if k not in reserved}
    flag_values = coerce_values(
        {k: tuple(v) if isinstance(v, list) else v for k, v in flag_values.items()}, source="flags"
    )
    config = build_config(file_values, flag_values)
    _disable_load_bars()
    from boothkit.train import summary_text, train

    result = train(config, progress=not ns.quiet)
    print(summary_text(result, config))
    return 0


def _generate(ns: argparse.Namespace) -> int:
    _disable_load_bars()
    from boothkit.generate import generate, missing_tokens, parse_adapter

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
    )
    for p in paths:
        print(p)
    return 0


def _check(ns: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    from boothkit.data.images import check_folder, parse_color

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
    from pathlib import Path

    run = Path(source)
    run = run if run.is_dir() else run.parent
    if (run / "config.toml").is_file():
        from boothkit.config import load_toml

        return str(load_toml(run / "config.toml").get("model") or "") or None
    return None


def _export(ns: argparse.Namespace) -> int:
    _disable_load_bars()
    from pathlib import Path

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
        lora = source / "pytorch_lora_weights.safetensors" if source.is_dir() else source
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
    from boothkit.toyworld.pretrain import CURRICULA, pretrain, pretrain_curriculum, settings_from_args

    if ns.curriculum:
        pretrain_curriculum(ns.output, CURRICULA[ns.curriculum], settings_from_args(ns))
        return 0
    pretrain(ns.output, settings_from_args(ns))
    return 0


def _toyworld_refine(ns: argparse.Namespace) -> int:
    _disable_load_bars()
    from pathlib import Path

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


def _toyworld_calibrate(ns: argparse.Namespace) -> int:
    _disable_load_bars()
    from pathlib import Path

    from boothkit.toyworld.pretrain import calibrate_model_tokens

    model = Path(ns.model)
    for part in ("tokenizer", "text_encoder"):
        if not (model / part).is_dir():
            raise BoothkitError(
                f"--model {model}: no {part}/ folder here", hint="pass a folder written by toyworld pretrain"
            )
    calibrate_model_tokens(model)
    return 0


def _toyworld_bench(ns: argparse.Namespace) -> int:
    _disable_load_bars()
    from dataclasses import replace

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
    from boothkit.generate import parse_adapter
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


def build_parser() -> argparse.ArgumentParser:
    from boothkit import __version__

    parser = argparse.ArgumentParser(
        prog="boothkit",
        description="DreamBooth for Stable Diffusion 1.x, 2.x and SDXL: LoRA with prior preservation.",
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
        description="Train DreamBooth-LoRA on a folder of photos. Every flag can also come from --config.",
    )
    p.add_argument("--config", help="TOML file with settings (flags override it)")
    _add_config_flags(p)
    p.set_defaults(func=_train)

    g = sub.add_parser("generate", parents=[common], help="generate images with a base model and LoRAs")
    g.add_argument("--model", required=True, help="base model: hub id, diffusers folder or .safetensors")
    g.add_argument(
        "--model-config",
        default=None,
        help="a single-file --model's configs: the diffusers folder or hub id it was made from",
    )
    g.add_argument(
        "--lora",
        action="append",
        help="run folder, checkpoint folder or .safetensors, optionally :weight (repeatable)",
    )
    g.add_argument("--prompt", required=True)
    g.add_argument("--negative", default="", help="negative prompt")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--num-images", type=int, default=1)
    g.add_argument("--steps", type=int, default=30)
    g.add_argument("--guidance", type=float, default=7.5)
    g.add_argument("--width", type=int, default=None)
    g.add_argument("--height", type=int, default=None)
    g.add_argument(
        "--scheduler", default=None, help="dpm++2m, euler, euler_a, ddim, pndm (default: the model's)"
    )
    g.add_argument("--output", default="outputs", help="folder for the images")
    g.add_argument("--device", default="cpu")
    g.add_argument(
        "--allow-pickle",
        action="store_true",
        help="allow .ckpt/.pt/.bin files, loaded with torch.load(weights_only=True)",
    )
    g.set_defaults(func=_generate)

    c = sub.add_parser("check", parents=[common], help="check a folder of photos before training")
    c.add_argument("folder")
    c.add_argument("--json", action="store_true", help="machine-readable report")
    c.add_argument("--resolution", type=int, default=512)
    c.add_argument("--alpha-background", default="white")
    c.set_defaults(func=_check)

    e = sub.add_parser(
        "export",
        parents=[common],
        help="convert a LoRA (kohya <-> diffusers) or merge it into its base",
        description="Convert a run's LoRA to the kohya/A1111/ComfyUI layout and back, verified numerically "
        "against the base model, or merge it into the base model.",
    )
    e.add_argument("source", help="run folder or LoRA .safetensors (either layout)")
    e.add_argument("--format", required=True, choices=["kohya", "diffusers", "merged"])
    e.add_argument("--output", required=True, help="output .safetensors file or folder")
    e.add_argument("--model", default=None, help="base model to verify against (default: the run's)")
    e.add_argument("--scale", type=float, default=1.0, help="LoRA scale for --format merged")
    e.add_argument(
        "--single-file", action="store_true", help="--format merged: one .safetensors for A1111/ComfyUI"
    )
    e.set_defaults(func=_export)

    d = sub.add_parser(
        "demo", parents=[common], help="the whole pipeline offline on the toy world, in about a minute"
    )
    d.add_argument("--output", default="runs/demo")
    d.add_argument("--subject", default="target_circle", help="toy-world subject to learn")
    d.add_argument("--steps", type=int, default=400, help="LoRA training steps (default 400)")
    d.set_defaults(func=_demo)

    tw = sub.add_parser("toyworld", help="the toy world: pretrain its base model, run the DreamBooth bench")
    tw_sub = tw.add_subparsers(dest="toyworld_command", required=True)
    tp = tw_sub.add_parser("pretrain", parents=[common], help="pretrain the toy base model (SD-1 layout)")
    tp.add_argument("--output", required=True, help="model folder to write")
    tp.add_argument("--steps", type=int, default=None, help="UNet + text encoder steps")
    tp.add_argument("--vae-steps", dest="vae_steps", type=int, default=None)
    tp.add_argument("--batch-size", dest="batch_size", type=int, default=None)
    tp.add_argument("--lr", type=float, default=None)
    tp.add_argument("--width", type=int, default=None, help="channels of the first UNet block (default 32)")
    tp.add_argument(
        "--levels",
        type=int,
        choices=(3, 4),
        default=None,
        help="UNet resolution levels (default 3; 4 adds a 3x3 level)",
    )
    tp.add_argument(
        "--pooled-text",
        dest="pooled_text",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="add the attention-pooled caption to the UNet's time embedding (default off)",
    )
    tp.add_argument(
        "--schedule",
        choices=("sd", "zero-snr"),
        default=None,
        help="noise schedule: sd (epsilon target, default) or zero-snr (v target, zero terminal SNR)",
    )
    tp.add_argument(
        "--high-noise-share",
        dest="high_noise_share",
        type=float,
        default=None,
        help="share of timesteps drawn from --high-noise-from to 999, where only the caption shows the layout (default 0)",
    )
    tp.add_argument(
        "--ema-decay",
        dest="ema_decay",
        type=float,
        default=None,
        help="decay of the weights' moving average that is evaluated and saved (default 0.995; 0: the raw weights)",
    )
    tp.add_argument(
        "--keep",
        choices=("best", "last"),
        default=None,
        help="which evaluated state the folder keeps: best joint fidelity (default) or the last",
    )
    tp.add_argument(
        "--high-noise-from",
        dest="high_noise_from",
        type=int,
        default=None,
        help="first timestep of the high-noise range (default 750; 999: the pure-noise step alone)",
    )
    tp.add_argument(
        "--pool",
        type=int,
        default=None,
        help="encode this many renders once and sample batches from them (default 0: fresh renders)",
    )
    tp.add_argument(
        "--workers",
        type=int,
        default=None,
        help="processes rendering the pool while the main one encodes (0: none; default: cores - 1, none on 2 cores)",
    )
    tp.add_argument("--eval-every", dest="eval_every", type=int, default=None)
    tp.add_argument("--eval-images", dest="eval_images", type=int, default=None)
    tp.add_argument(
        "--max-minutes",
        dest="max_minutes",
        type=float,
        default=None,
        help="stop the UNet phase after this long",
    )
    tp.add_argument("--device", default=None, help="cpu or cuda")
    tp.add_argument("--seed", type=int, default=None)
    tp.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    tp.add_argument(
        "--vae-from",
        dest="vae_from",
        default=None,
        help="reuse the trained VAE of this model folder instead of training one",
    )
    tp.add_argument(
        "--init-from",
        dest="init_from",
        default=None,
        help="continue pretraining this toy model folder (its tokenizer, text encoder, UNet and VAE)",
    )
    tp.add_argument(
        "--decoder-steps",
        dest="decoder_steps",
        type=int,
        default=None,
        help="decoder-only refinement after the UNet phase",
    )
    tp.add_argument(
        "--multicolor-share",
        dest="multicolor_share",
        type=float,
        default=None,
        help="share of the UNet's training objects painted in several colours, captioned without one",
    )
    tp.add_argument(
        "--named-share",
        dest="named_share",
        type=float,
        default=None,
        help="share of those multi-colour objects named in the caption by a rare token (sks, zwx, ...)",
    )
    tp.add_argument(
        "--individuals",
        type=int,
        default=None,
        help="with --named-share: the named objects are this many fixed individuals, a look per name (up to 48)",
    )
    tp.add_argument(
        "--fine-attention",
        dest="fine_attention",
        action="store_true",
        default=None,
        help="cross-attention at the first (finest) UNet level too; with --init-from, added to that model",
    )
    tp.add_argument(
        "--decoder-multicolor-share",
        dest="decoder_multicolor_share",
        type=float,
        default=None,
        help="share of the decoder refinement's objects painted in several colours",
    )
    tp.add_argument(
        "--rare-token-norm",
        dest="rare_token_norm",
        action="store_true",
        default=None,
        help="after training, rescale the rows of tokens no caption uses (sks, ...) to the trained rows' norm",
    )
    tp.add_argument(
        "--curriculum",
        choices=["v2", "v3", "v4"],
        default=None,
        help="run a recorded sequence of phases (v4: the shipped model from scratch); "
        "each phase's settings replace the same flags",
    )
    tp.set_defaults(func=_toyworld_pretrain)
    tr = tw_sub.add_parser(
        "refine-decoder",
        parents=[common],
        help="train only the VAE decoder of a toy model folder (encoder frozen), in place",
    )
    tr.add_argument("--model", required=True, help="toy model folder (written by toyworld pretrain)")
    tr.add_argument("--steps", type=int, default=1000)
    tr.add_argument("--lr", type=float, default=5e-4)
    tr.add_argument("--object-weight", dest="object_weight", type=float, default=10.0)
    tr.add_argument(
        "--multicolor-share",
        dest="multicolor_share",
        type=float,
        default=0.0,
        help="share of training objects painted in several colours (never a subject's look)",
    )
    tr.add_argument("--every", type=int, default=100, help="evaluate (and keep the best) every N steps")
    tr.set_defaults(func=_toyworld_refine)
    tc = tw_sub.add_parser(
        "calibrate-tokens",
        parents=[common],
        help="rescale the text encoder rows of tokens no caption uses to the trained rows' norm, in place",
    )
    tc.add_argument("--model", required=True, help="toy model folder (written by toyworld pretrain)")
    tc.set_defaults(func=_toyworld_calibrate)
    tb = tw_sub.add_parser("bench", parents=[common], help="DreamBooth methods measured on the toy world")
    tb.add_argument("--output", required=True, help="folder for bench.json, bench.md, grids, index.html")
    tb.add_argument("--model", default=None, help="base model (default: the shipped toy model)")
    tb.add_argument("--subjects", nargs="+", default=None, help="subjects (default: the benchmark subjects)")
    tb.add_argument("--methods", nargs="+", choices=("lora", "full", "ti", "pivotal"), default=None)
    tb.add_argument("--prior", choices=("both", "yes", "no"), default="both", help="prior preservation runs")
    tb.add_argument("--steps", type=int, default=None, help="training steps for every method")
    tb.add_argument("--seeds", type=int, default=None, help="seeds per prompt")
    tb.add_argument("--class-images", dest="class_images", type=int, default=None)
    tb.add_argument(
        "--no-captions",
        action="store_true",
        help="one prompt for every instance photo and every class image (the protocol before 2026-12-05)",
    )
    tb.add_argument("--token", default=None, help="the identifier the subject is trained on (default: sks)")
    tb.add_argument("--quick", action="store_true", help="1 subject, LoRA with prior, few steps: a smoke run")
    tb.add_argument("--device", default="cpu")
    tb.set_defaults(func=_toyworld_bench)

    def sampling_flags(q: argparse.ArgumentParser, steps: int = 30) -> None:
        q.add_argument("--model", required=True, help="base model: hub id, diffusers folder or .safetensors")
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
        q.add_argument("--seed", type=int, default=0)
        q.add_argument("--steps", type=int, default=steps)
        q.add_argument("--guidance", type=float, default=7.5)
        q.add_argument("--width", type=int, default=None)
        q.add_argument("--height", type=int, default=None)
        q.add_argument(
            "--scheduler", default=None, help="dpm++2m, euler, euler_a, ddim, pndm (default: the model's)"
        )
        q.add_argument("--device", default="cpu")
        q.add_argument(
            "--allow-pickle",
            action="store_true",
            help="allow .ckpt/.pt/.bin files, loaded with torch.load(weights_only=True)",
        )

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
    sampling_flags(gr)
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
        "--values", type=float, nargs="+", default=None, help="guidance: scales (default 1.5 3 7.5 12 20)"
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
    sampling_flags(mo)
    mo.add_argument("--prompt", required=True)
    mo.add_argument(
        "--seeds", type=int, nargs="+", default=None, help="keyframe seeds (default: from --seed)"
    )
    mo.add_argument(
        "--keyframes", type=int, default=5, help="keyframes from --seed when --seeds is not given"
    )
    mo.add_argument("--duration", type=float, default=15.0, help="loop length in seconds")
    mo.add_argument("--fps", type=float, default=30.0)
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
    except Exception as e:  # an unexpected failure: say what, point at --debug
        if ns.debug:
            traceback.print_exc()
        else:
            print(f"error: {type(e).__name__}: {e}", file=sys.stderr)
            print("  (run again with --debug for the traceback, and please report it)", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
