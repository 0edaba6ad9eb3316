"""A base model opened for sampling, as `generate`, `grid`, `morph`, the demo and the bench use it:
its pipeline, the scheduler asked for, the adapters loaded into it, and the image sizes it can draw."""

from __future__ import annotations

import math
import sys
from collections.abc import Callable, Sequence
from typing import Any

import diffusers

from boothkit.adapters import Adapter, AdapterSet
from boothkit.errors import BoothkitError
from boothkit.families import Family, LoadOptions, load_model, prompt_fit
from boothkit.metadata import read_metadata, trained_token

SCHEDULERS: dict[str, tuple[str, dict[str, Any]]] = {
    "dpm++2m": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++", "solver_order": 2}),
    "euler": ("EulerDiscreteScheduler", {}),
    "euler_a": ("EulerAncestralDiscreteScheduler", {}),
    "ddim": ("DDIMScheduler", {}),
    "pndm": ("PNDMScheduler", {}),
}


def check_scheduler(name: str | None) -> None:
    """Refuse an unknown ``--scheduler`` before any model loads."""
    if name is not None and name not in SCHEDULERS:
        raise BoothkitError(f"--scheduler {name!r} is not known; choose one of {', '.join(SCHEDULERS)}")


def set_scheduler(pipe: Any, name: str | None) -> None:
    check_scheduler(name)
    if name is None:
        return
    cls_name, kwargs = SCHEDULERS[name]
    pipe.scheduler = getattr(diffusers, cls_name).from_config(pipe.scheduler.config, **kwargs)


def image_size(family: Family, width: int | None, height: int | None) -> tuple[int, int]:
    """(width, height): the model's default resolution where not given; each a positive multiple of
    8 (diffusers' pipelines refuse others) and of the VAE's downscaling factor."""
    size = family.default_resolution
    width, height = width or size, height or size
    step = math.lcm(8, family.vae_scale_factor)
    for flag, value in (("--width", width), ("--height", height)):
        if value <= 0 or value % step:
            near = max(step, round(value / step) * step)
            raise BoothkitError(
                f"{flag} {value} must be a positive multiple of {step} for this model", hint=f"try {near}"
            )
    return width, height


class Sampler:
    """A base model's pipeline with a scheduler, and the adapters loaded into it (:class:`AdapterSet`)."""

    def __init__(
        self, family: Family, *, scheduler: str | None = None, warn: Callable[[str], None] | None = None
    ) -> None:
        self.family = family
        self.warn = warn or _to_stderr
        self._checked: set[str] = set()
        self.pipe = family.pipeline()
        set_scheduler(self.pipe, scheduler)
        self.pipe.set_progress_bar_config(disable=True)
        self.scheduler = scheduler or type(self.pipe.scheduler).__name__
        self.adapters = AdapterSet(self.pipe, family.name)

    @classmethod
    def open(
        cls,
        model: str | Family,
        *,
        scheduler: str | None = None,
        device: str = "cpu",
        allow_pickle: bool = False,
        model_config: str | None = None,
    ) -> Sampler:
        """Load ``model`` (a hub id, folder or single file, or a loaded family) for sampling."""
        check_scheduler(scheduler)
        family = (
            model
            if not isinstance(model, str)
            else load_model(model, LoadOptions(model_config, device=device, allow_pickle=allow_pickle))
        )
        return cls(family, scheduler=scheduler)

    def use(self, adapters: Sequence[Adapter], prompt: str | None = None) -> Any:
        """Activate exactly ``adapters`` (with their weights); returns the pipeline. With ``prompt``,
        check that the text encoder reads it whole: a warning says what is cut off, and a prompt whose
        adapters' token falls in the cut part is refused (the subject would silently not show)."""
        self.adapters.activate(adapters)
        if prompt is not None and prompt not in self._checked:
            words = [t for a in adapters if (t := trained_token(read_metadata(a.path)))]
            note = prompt_fit(self.family.tokenizers, prompt, words)
            if note:
                self.warn(f"warning: {note}")
            self._checked.add(prompt)
        return self.pipe

    def guidance(self, scale: float | None) -> float:
        """``scale``, or the model's own default guidance when None."""
        return self.family.default_guidance if scale is None else scale

    def size(self, width: int | None, height: int | None) -> tuple[int, int]:
        return image_size(self.family, width, height)


def open_pipeline(
    model: str | Family,
    adapters: Sequence[Adapter] = (),
    *,
    scheduler: str | None = None,
    device: str = "cpu",
    allow_pickle: bool = False,
    model_config: str | None = None,
) -> Any:
    """A diffusers pipeline of ``model`` with ``adapters`` active: the short way to a :class:`Sampler`'s pipeline."""
    sampler = Sampler.open(
        model, scheduler=scheduler, device=device, allow_pickle=allow_pickle, model_config=model_config
    )
    return sampler.use(adapters)


def _to_stderr(message: str) -> None:
    print(message, file=sys.stderr)


__all__ = ["SCHEDULERS", "Sampler", "check_scheduler", "image_size", "open_pipeline", "set_scheduler"]
