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
    from boothkit.generate import generate, parse_adapter

    adapters = [parse_adapter(s, allow_pickle=ns.allow_pickle) for s in ns.lora or []]
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


def _demo(ns: argparse.Namespace) -> int:
    _disable_load_bars()
    from boothkit.demo import run_demo

    run_demo(ns.output, images=ns.images, steps=ns.steps, progress=not ns.quiet)
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
        "--lora", action="append", help="run folder or .safetensors, optionally :weight (repeatable)"
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

    d = sub.add_parser(
        "demo", parents=[common], help="the whole pipeline offline on a tiny model, in minutes"
    )
    d.add_argument("--output", default="runs/demo")
    d.add_argument("--images", default=None, help="photos to use (default: the shared DreamBooth dog)")
    d.add_argument("--steps", type=int, default=150)
    d.set_defaults(func=_demo)
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
