"""Checkpoints that resume exactly and can't be half-written, and can't run code when read.

A checkpoint is a folder `checkpoints/step-NNNNNN/` holding only safetensors and JSON:

  trainable.safetensors   every parameter that trains, by its qualified name
  optimizer.safetensors   the optimizer's tensors; optimizer.json the rest of its state
  rng.safetensors         the loop's generator and torch's global RNG states; rng.json python/numpy
  state.json              step, batch size, accumulation, skipped steps, LR scheduler, grad scaler
  manifest.json           config, image hashes, and the sha256 of every file above

It is written under a temporary name, each file fsynced, then renamed into place: a crash leaves
either the previous checkpoints or a complete new one. Old checkpoints are deleted only after the
new one has been read back and checked against its manifest.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import signal
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from boothkit.errors import BoothkitError, WriteError
from boothkit.files import CHECKPOINT_MANIFEST, CHECKPOINT_WEIGHTS, CHECKPOINTS_DIR, step_name
from boothkit.io import _fsync_dir

FORMAT = 1
# Settings that may differ between a run and its resumption without changing what it computes.
RESUMABLE_CHANGES = frozenset(
    {
        "steps",
        "checkpoint_every",
        "keep_checkpoints",
        "sample_every",
        "resume",
        "force_resume",
        "output",  # a run folder moved or copied elsewhere is the same run
        "device",
        "auto_batch_size",
        "allow_pickle",
        "max_nan_steps",
    }
)


@dataclass
class LoopState:
    """What the loop itself needs to continue (beyond weights, optimizer and RNG)."""

    step: int
    batch_size: int
    grad_accum: int
    skipped_steps: int = 0


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def all_finite(tensors: dict[str, torch.Tensor]) -> bool:
    return all(bool(torch.isfinite(t).all()) for t in tensors.values() if t.is_floating_point())


# ----------------------------------------------------------------------------- optimizer <-> safetensors + JSON


def _split_optimizer(state: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    tensors: dict[str, torch.Tensor] = {}
    plain: dict[str, Any] = {"param_groups": state["param_groups"], "state": {}}
    for index, slots in state["state"].items():
        plain["state"][str(index)] = {}
        for name, value in slots.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{index}.{name}"] = value.detach().cpu().contiguous()
            else:
                plain["state"][str(index)][name] = value
    return tensors, plain


def _join_optimizer(tensors: dict[str, torch.Tensor], plain: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {int(i): dict(slots) for i, slots in plain["state"].items()}
    for key, value in tensors.items():
        index, name = key.split(".", 1)
        state.setdefault(int(index), {})[name] = value
    return {"state": state, "param_groups": plain["param_groups"]}


# ----------------------------------------------------------------------------- RNG


def rng_state(generator: torch.Generator) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    tensors = {"generator": generator.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"cuda.{i}"] = s
    np_state: Any = np.random.get_state()
    plain = {
        "python": [random.getstate()[0], list(random.getstate()[1]), random.getstate()[2]],
        "numpy": [np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]), float(np_state[4])],
    }
    return tensors, plain


def restore_rng(generator: torch.Generator, tensors: dict[str, torch.Tensor], plain: dict[str, Any]) -> None:
    generator.set_state(tensors["generator"])
    torch.set_rng_state(tensors["torch"])
    if torch.cuda.is_available():
        states = [tensors[k] for k in sorted(tensors) if k.startswith("cuda.")]
        if states:
            torch.cuda.set_rng_state_all(states)
    version, internal, gauss = plain["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = plain["numpy"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))


# ----------------------------------------------------------------------------- save / verify / rotate


def _write_safetensors(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(path))


def _write_json(path: Path, data: Any) -> None:
    path.write_text(
        json.dumps(data, indent=1, sort_keys=True, default=_json_default) + "\n", encoding="utf-8"
    )


def _json_default(value: Any) -> Any:
    if isinstance(value, tuple | set):
        return list(value)
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot store {type(value).__name__} in a checkpoint")


def save_checkpoint(
    run_dir: Path,
    loop: LoopState,
    *,
    trainable: dict[str, torch.Tensor],
    optimizer: torch.optim.Optimizer,
    lr_scheduler: Any,
    scaler: Any,
    generator: torch.Generator,
    manifest: dict[str, Any],
    keep: int | None = None,
) -> Path:
    """Write a complete checkpoint for `loop.step` atomically, verify it, then rotate old ones."""
    if not all_finite(trainable):
        raise BoothkitError(f"refusing to save a checkpoint at step {loop.step}: some weights are not finite")
    root = run_dir / CHECKPOINTS_DIR
    root.mkdir(parents=True, exist_ok=True)
    final = root / step_name(loop.step)
    tmp = root / f".{step_name(loop.step)}.partial-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        opt_tensors, opt_plain = _split_optimizer(optimizer.state_dict())
        rng_tensors, rng_plain = rng_state(generator)
        _write_safetensors(tmp / CHECKPOINT_WEIGHTS, trainable)
        fault_point("checkpoint-write", loop.step)
        _write_safetensors(tmp / "optimizer.safetensors", opt_tensors)
        _write_json(tmp / "optimizer.json", opt_plain)
        _write_safetensors(tmp / "rng.safetensors", rng_tensors)
        _write_json(tmp / "rng.json", rng_plain)
        _write_json(
            tmp / "state.json",
            {
                "loop": loop.__dict__,
                "lr_scheduler": lr_scheduler.state_dict(),
                "scaler": scaler.state_dict() if scaler is not None else None,
            },
        )
        files = sorted(p.name for p in tmp.iterdir())
        _write_json(
            tmp / CHECKPOINT_MANIFEST,
            {
                **manifest,
                "format": FORMAT,
                "step": loop.step,
                "files": {name: sha256(tmp / name) for name in files},
            },
        )
        for p in tmp.iterdir():
            with p.open("rb") as fh:
                os.fsync(fh.fileno())
        _fsync_dir(tmp)
        if final.exists():  # an earlier checkpoint of the same step (e.g. saved, then resumed and re-saved)
            shutil.rmtree(final)
        os.replace(tmp, final)
        _fsync_dir(root)
    except (OSError, SafetensorError) as e:  # a full disk reaches safetensors' writer as its own error
        shutil.rmtree(tmp, ignore_errors=True)
        previous = latest_checkpoint(run_dir)
        kept = f"the previous checkpoint {previous} is intact" if previous else "no earlier checkpoint exists"
        reason = getattr(e, "strerror", None) or str(e).splitlines()[0][:200]
        raise WriteError(
            f"could not write the checkpoint for step {loop.step} ({reason}); {kept}",
            hint="free disk space, then resume with `boothkit train --resume " + str(run_dir) + "`",
        ) from None
    if not verify(final):
        raise BoothkitError(
            f"checkpoint {final} did not match its manifest after writing; older checkpoints kept"
        )
    if keep:
        for old in list_checkpoints(run_dir)[keep:]:
            shutil.rmtree(old, ignore_errors=True)
    return final


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Complete-looking checkpoint folders, newest first (partial writes have a dot name)."""
    root = run_dir / CHECKPOINTS_DIR
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and p.name.startswith("step-") and p.name[5:].isdigit()]
    return sorted(found, key=lambda p: int(p.name[5:]), reverse=True)


def checkpoint_problem(checkpoint: Path) -> str | None:
    """Why ``checkpoint`` can't be resumed from (a file missing or changed since it was written), or None."""
    try:
        manifest = json.loads((checkpoint / CHECKPOINT_MANIFEST).read_text(encoding="utf-8"))
        files = manifest["files"]
        if not isinstance(files, dict) or not files:
            return f"its {CHECKPOINT_MANIFEST} lists no files"
    except FileNotFoundError:
        return f"it has no {CHECKPOINT_MANIFEST}"
    except (OSError, ValueError, KeyError, TypeError) as e:
        return f"its {CHECKPOINT_MANIFEST} can't be read ({e})"
    for name, digest in sorted(files.items()):
        try:
            if sha256(checkpoint / name) != digest:
                return f"{name} does not match the hash its manifest records"
        except OSError:
            return f"{name} is missing or unreadable"
    return None


def verify(checkpoint: Path) -> bool:
    """Every file the manifest names is there with its hash, and nothing else is needed."""
    return checkpoint_problem(checkpoint) is None


def find_checkpoint(run_dir: Path) -> tuple[Path | None, list[str]]:
    """The newest checkpoint that verifies, and a note for each newer one passed over and why."""
    passed_over: list[str] = []
    for candidate in list_checkpoints(run_dir):
        problem = checkpoint_problem(candidate)
        if problem is None:
            return candidate, passed_over
        passed_over.append(f"checkpoint {candidate} can't be used: {problem}")
    return None, passed_over


def latest_checkpoint(run_dir: Path) -> Path | None:
    return find_checkpoint(run_dir)[0]


def remove_partials(run_dir: Path) -> None:
    root = run_dir / CHECKPOINTS_DIR
    if root.is_dir():
        for p in root.iterdir():
            if p.name.startswith(".") and ".partial-" in p.name:
                shutil.rmtree(p, ignore_errors=True)


# ----------------------------------------------------------------------------- load


@dataclass
class Checkpoint:
    path: Path
    manifest: dict[str, Any]
    loop: LoopState
    trainable: dict[str, torch.Tensor]
    optimizer: dict[str, Any]
    lr_scheduler: dict[str, Any]
    scaler: dict[str, Any] | None
    rng_tensors: dict[str, torch.Tensor]
    rng_plain: dict[str, Any]


def load_checkpoint(path: Path) -> Checkpoint:
    """Read a checkpoint through safetensors and JSON only: a crafted folder cannot run code."""
    problem = checkpoint_problem(path)
    if problem is not None:
        raise BoothkitError(f"checkpoint {path} can't be used: {problem}")
    try:
        manifest = json.loads((path / CHECKPOINT_MANIFEST).read_text(encoding="utf-8"))
        state = json.loads((path / "state.json").read_text(encoding="utf-8"))
        optimizer = _join_optimizer(
            load_file(path / "optimizer.safetensors"),
            json.loads((path / "optimizer.json").read_text(encoding="utf-8")),
        )
        return Checkpoint(
            path=path,
            manifest=manifest,
            loop=LoopState(**state["loop"]),
            trainable=load_file(path / CHECKPOINT_WEIGHTS),
            optimizer=optimizer,
            lr_scheduler=state["lr_scheduler"],
            scaler=state["scaler"],
            rng_tensors=load_file(path / "rng.safetensors"),
            rng_plain=json.loads((path / "rng.json").read_text(encoding="utf-8")),
        )
    except (OSError, ValueError, KeyError, TypeError, SafetensorError) as e:
        raise BoothkitError(f"checkpoint {path} could not be read: {e}") from None


def config_differences(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """Settings that differ in a way that changes what the run computes."""
    out = []
    for key in sorted(set(saved) | set(current)):
        if key in RESUMABLE_CHANGES:
            continue
        a, b = saved.get(key), current.get(key)
        if isinstance(a, list):
            a = tuple(a)
        if isinstance(b, list):
            b = tuple(b)
        if a != b:
            out.append(f"{key}: {a!r} in the checkpoint, {b!r} now")
    return out


def resume_problems(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """What differs between a checkpoint's manifest and the run about to continue it, for the parts
    ``current`` holds (the settings, the instance and class images, the base model)."""
    problems = config_differences(saved.get("config", {}), current["config"]) if "config" in current else []
    for key, what in (
        ("images_hash", "the instance images changed"),
        ("class_images_hash", "the class images changed"),
        ("model_fingerprint", "the base model changed"),
    ):
        if key in current and saved.get(key) != current[key]:
            problems.append(what)
    return problems


def read_manifest(checkpoint: Path) -> dict[str, Any]:
    try:
        data = json.loads((checkpoint / CHECKPOINT_MANIFEST).read_text(encoding="utf-8"))
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")
        return data
    except (OSError, ValueError) as e:
        raise BoothkitError(f"checkpoint {checkpoint} can't be read: {CHECKPOINT_MANIFEST}: {e}") from None


# ----------------------------------------------------------------------------- fault injection (tests)


def fault_point(name: str, step: int) -> None:
    """Die here with SIGKILL when BOOTHKIT_FAULT names this point (used by the crash tests).

    BOOTHKIT_FAULT="checkpoint-write:3" kills the process in the middle of writing the first
    checkpoint at or after step 3; "micro:5" in the middle of step 5's gradient accumulation.
    """
    spec = os.environ.get("BOOTHKIT_FAULT")
    if not spec:
        return
    point, _, at = spec.partition(":")
    if point != name:
        return
    if at and step < int(at):
        return

    os.kill(os.getpid(), signal.SIGKILL)


def named_trainable(modules: dict[str, torch.nn.Module]) -> Iterator[tuple[str, torch.nn.Parameter]]:
    for prefix, module in modules.items():
        for name, p in module.named_parameters():
            if p.requires_grad:
                yield f"{prefix}.{name}", p
