"""Checks before a run does any work: folders, photos, class images, prompts, token, device.

Everything that can be refused from the configuration and the files alone is refused before the
model loads, so a bad photo or a prompt without the token fails in seconds and changes nothing on
disk (:func:`preflight`). What needs the loaded model (its tokenizer, its native resolution) is
checked right after it loads (:func:`token_warnings`; your own class images: `prior.class_images`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from boothkit.checkpoint import find_checkpoint, read_manifest, resume_problems
from boothkit.config import TrainConfig
from boothkit.data.captions import check_captions_omit_token, check_prompts_name_token
from boothkit.data.images import CheckReport, check_folder, images_hash, parse_color
from boothkit.errors import BoothkitError
from boothkit.families import Family
from boothkit.methods import TrainingMethod

# Short nonsense words that CLIP's tokenizer keeps as one rare piece: what to suggest instead of a
# token that splits or is a common word.
SUGGESTED_TOKENS = ("sks", "ohwx", "zwx", "qwx", "vvn", "xjy", "mkr", "phol", "txcl", "bnha")


@dataclass(frozen=True)
class Preflight:
    """What the checks found: the usable photos, and the checkpoint a resume continues from."""

    images: list[Path]
    resume_from: Path | None
    notes: list[str]  # checkpoints passed over because they are damaged
    skipped: list[str]  # photos --skip-invalid leaves out, 'file: reason'


def preflight(config: TrainConfig, method: TrainingMethod) -> Preflight:
    """Every check that needs no model, in the order a person would fix them."""
    check_folders(config)
    resume_from, notes = resume_point(config)
    report = instance_report(config)
    images = check_instance_images(config, report)
    skipped = report.skipped() if config.skip_invalid else []
    if resume_from is not None:  # the settings and photos can be compared before the model loads
        current = {"config": dataclasses.asdict(config), "images_hash": images_hash(images)}
        refuse_changed_run(resume_from, resume_problems(read_manifest(resume_from), current), config)
    check_prompts_name_token(
        images,
        Path(config.images).expanduser(),
        template=config.instance_prompt,
        token=method.identifier(config.token),
    )
    if config.uses_prior and config.class_dir:
        check_captions_omit_token(Path(config.class_dir).expanduser(), config.token)
    return Preflight(images, resume_from, notes, skipped)


# ----------------------------------------------------------------------------- folders


def _within(path: Path, folder: Path) -> bool:
    """Whether ``path`` is ``folder`` or lies inside it (symlinks resolved)."""
    path, folder = path.expanduser().resolve(), folder.expanduser().resolve()
    return path == folder or folder in path.parents


def _refuse_link_loops(flags: list[tuple[str, Path]]) -> None:
    for flag, path in flags:
        try:
            path.expanduser().resolve()
        except (RuntimeError, OSError):  # Python reports a loop of symbolic links as RuntimeError
            raise BoothkitError(
                f"{flag} {path}: a symbolic link on this path points back into itself",
                hint="fix the link, or pass the real folder",
            ) from None


def check_folders(config: TrainConfig) -> None:
    """Refuse folder choices that would write into the user's photos or mix the two kinds of images:
    what is written under --images or --class-dir would be read as photos by the next run."""
    inputs = [("--images", Path(config.images))]
    _refuse_link_loops(inputs)
    if config.class_dir:
        class_dir = Path(config.class_dir)
        if _within(class_dir, inputs[0][1]) or _within(inputs[0][1], class_dir):
            raise BoothkitError(
                f"--class-dir {class_dir} and --images {config.images} overlap: class images must be other "
                f"{config.class_noun or 'members of the class'}, not your subject's photos",
                hint="put your class images in a folder of their own, or drop --class-dir to generate them",
            )
        inputs.append(("--class-dir", class_dir))
    written = [("--output", Path(config.output))]
    if config.bank_dir:
        written.append(("--bank-dir", Path(config.bank_dir)))
    _refuse_link_loops([*inputs, *written])
    for wflag, wpath in written:
        for iflag, ipath in inputs:
            if _within(wpath, ipath):
                raise BoothkitError(
                    f"{wflag} {wpath} is inside {iflag} {ipath}: boothkit never writes into your image "
                    "folders, and what it wrote there would be read as images by the next run",
                    hint=f"choose a {wflag} folder outside {ipath}",
                )


def resume_point(config: TrainConfig) -> tuple[Path | None, list[str]]:
    """The checkpoint to resume from (None for a fresh run; never silently starts over), and a note
    for each newer checkpoint passed over because it is damaged."""
    if config.resume is None:
        return None, []
    out = Path(config.output).expanduser()
    run_dir = out if config.resume == "latest" else Path(config.resume).expanduser()
    if run_dir.resolve() != out.resolve():
        raise BoothkitError(
            f"--resume {run_dir} differs from --output {out}", hint="resume writes into the run it continues"
        )
    ckpt, passed_over = find_checkpoint(run_dir)
    if ckpt is None:
        found = "; ".join(passed_over) or "there are none"
        raise BoothkitError(
            f"--resume {run_dir}: no complete checkpoint to resume from ({found}); nothing was changed",
            hint="checkpoints are written every --checkpoint-every steps and on Ctrl-C",
        )
    return ckpt, passed_over


def refuse_changed_run(checkpoint: Path, problems: list[str], config: TrainConfig) -> None:
    """A resume continues the same run: refuse one whose settings, images or model changed."""
    if problems and not config.force_resume:
        raise BoothkitError(
            f"refusing to resume from {checkpoint}: " + "; ".join(problems) + "; nothing was changed",
            hint="resume with the same settings and images, or pass --force-resume to continue anyway",
        )


# ----------------------------------------------------------------------------- images


def instance_report(config: TrainConfig) -> CheckReport:
    """The photo check of --images, every file with its status and reason."""
    folder = Path(config.images).expanduser()
    if not folder.is_dir():
        raise BoothkitError(
            f"--images {folder} is not a folder", hint="pass the folder that holds your photos"
        )
    return check_folder(
        folder, resolution=config.resolution or 512, alpha_background=parse_color(config.alpha_background)
    )


def check_instance_images(config: TrainConfig, report: CheckReport | None = None) -> list[Path]:
    """The usable photos in --images; a rejected one stops the run by name unless --skip-invalid."""
    report = report or instance_report(config)
    return report.require_usable(
        f"--images {report.root}",
        skip_invalid=config.skip_invalid,
        empty_hint="add 3-20 photos of the subject (jpg, png, webp)",
    )


# ----------------------------------------------------------------------------- the model's side


def _common(tokenizer: Any, piece: str) -> bool:
    """A BPE id ranks a token by how early its merge was learned, i.e. how frequent the word is.

    Only meaningful for full-size vocabularies (CLIP's 49408); tiny test tokenizers are skipped.
    """
    vocab = len(tokenizer)
    if vocab < 10_000:
        return False
    token_id = tokenizer.convert_tokens_to_ids(piece)
    return 512 <= token_id < int(0.4 * vocab)  # ids below 512 are single bytes


def token_warnings(model: Family, token: str) -> list[str]:
    """A token that splits into pieces, or is a common word, binds the subject to other meanings.

    Judged by the model's CLIP tokenizers, whose byte-pair ranks say how common a word is; a
    SentencePiece tokenizer (Flux's T5) splits nearly every rare word, so its pieces say nothing.
    """
    clip = [t for t in model.tokenizers if "CLIP" in type(t).__name__]

    def ok(candidate: str) -> bool:
        for tokenizer in clip:
            pieces = tokenizer.tokenize(candidate)
            if len(pieces) != 1 or _common(tokenizer, pieces[0]):
                return False
        return True

    if ok(token):
        return []
    suggestions = [c for c in SUGGESTED_TOKENS if c != token and ok(c)][:3]
    hint = (
        f"rarer single-piece tokens: {', '.join(suggestions)}" if suggestions else "try a short nonsense word"
    )
    for tokenizer in clip:
        pieces = tokenizer.tokenize(token)
        if len(pieces) != 1:
            return [
                f"token {token!r} is split by the tokenizer into {len(pieces)} pieces {pieces}, which binds "
                f"the subject to several tokens' meanings; {hint}"
            ]
    return [f"token {token!r} is a common word, so the subject will mix with its meaning; {hint}"]


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise BoothkitError(f"--device {name}: no CUDA device is available", hint="use --device cpu")
    return device


__all__ = [
    "SUGGESTED_TOKENS",
    "Preflight",
    "check_folders",
    "check_instance_images",
    "preflight",
    "resolve_device",
    "refuse_changed_run",
    "resume_point",
    "token_warnings",
]
