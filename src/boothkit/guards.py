"""What keeps a run from losing work: out-of-memory advice, a clean stop on Ctrl-C, a disk check."""

from __future__ import annotations

import shutil
import signal
import threading
from typing import Any

import torch

from boothkit.checkpoint import LoopState
from boothkit.errors import BoothkitError
from boothkit.run import Run


def is_oom(error: BaseException) -> bool:
    return isinstance(error, torch.cuda.OutOfMemoryError) or (
        isinstance(error, RuntimeError)
        and ("out of memory" in str(error) or "can't allocate memory" in str(error))
    )


def oom_message(run: Run, loop: LoopState) -> BoothkitError:
    c = run.config
    remedies = []
    if not c.gradient_checkpointing:
        remedies.append("--gradient-checkpointing")
    if c.mixed_precision == "no" and run.device.type == "cuda":
        remedies.append("--mixed-precision bf16 (or fp16 on older GPUs)")
    if not c.adam_8bit and run.device.type == "cuda":
        remedies.append("--adam-8bit (pip install bitsandbytes)")
    if c.quantize_base != "nf4" and c.method != "full":
        remedies.append("--quantize-base nf4 (the frozen base in 4 bits)")
    if loop.batch_size > 1:
        remedies.append(
            f"--batch-size {max(1, loop.batch_size // 2)} --grad-accum {loop.grad_accum * 2} "
            "(same effective batch), or --auto-batch-size"
        )
    remedies.append(f"a lower --resolution than {run.resolution}")
    if c.method != "lora":
        remedies.append("--method lora (trains far fewer weights)")
    if c.train_text_encoder:
        remedies.append("drop --train-text-encoder (cached prompt embeddings need no encoder in memory)")
    return BoothkitError(
        f"out of memory at step {loop.step + 1} (method {c.method}, batch {loop.batch_size} instance + "
        f"{loop.batch_size if run.priors else 0} class images, resolution {run.resolution}, precision "
        f"{c.mixed_precision}, device {run.device}; latents and prompt embeddings are already cached)",
        hint="try " + "; ".join(remedies),
    )


class StopFlag:
    """SIGINT/SIGTERM set a flag; the loop finishes its step, saves a checkpoint and stops cleanly."""

    def __init__(self) -> None:
        self.signal: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopFlag:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signal is not None:  # a second Ctrl-C: stop now
            raise KeyboardInterrupt
        self.signal = signum

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def estimate_disk(run: Run) -> int:
    """Refuse to start when the disk can't hold what the run will write; returns the estimate."""
    c = run.config
    trainable = sum(p.numel() * 4 for p in run.params)
    per_checkpoint = trainable * 3 + (1 << 16)  # weights + two Adam moments + small files
    checkpoints = 0
    if c.checkpoint_every:
        count = c.steps // c.checkpoint_every
        checkpoints = min(count, c.keep_checkpoints or count) + 1
    grid = (run.resolution**2) * 3 * max(1, len(c.sample_prompts) * len(c.sample_seeds))
    samples = grid * (1 + (c.steps // c.sample_every if c.sample_every else 0))
    needed = trainable + per_checkpoint * checkpoints + samples + (1 << 20)
    free = shutil.disk_usage(run.out if run.out.exists() else run.out.parent).free
    if free < needed:
        raise BoothkitError(
            f"not enough disk space in {run.out}: the run needs about {needed:,} bytes, {free:,} are free",
            hint="free some space, choose another --output, or keep fewer checkpoints (--keep-checkpoints)",
        )
    return needed
