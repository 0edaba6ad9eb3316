"""A small procedural image world in which DreamBooth's effects can be measured exactly.

Real base models and photos can't tell whether fine-tuning learned a subject, kept its class prior
or still follows the prompt; in this world all three are checkable:

* :mod:`.scene` - what an image shows (:class:`Scene`), its caption, and parsing the caption back;
* :mod:`.render` - a deterministic renderer (numpy and Pillow only);
* :mod:`.subjects` - unique multi-coloured objects that ordinary scenes never contain, with their
  few instance photos;
* :mod:`.oracles` - measurements of any image (also blurry generated ones) against the truth:
  shape, colour, size, position, background, whether it shows a given subject, colour histograms.

Images are 64x64 by default and the world works at 32 and 128 too.
"""

from boothkit.toyworld.oracles import (
    SUBJECT_THRESHOLD,
    Measurement,
    colour_distribution,
    colour_drift,
    colour_histogram,
    is_subject,
    measure,
    subject_score,
)
from boothkit.toyworld.render import (
    BACKGROUND_TONES,
    OBJECT_RGB,
    Placement,
    placement,
    render,
    render_pattern,
)
from boothkit.toyworld.scene import (
    BACKGROUNDS,
    COLORS,
    POSITIONS,
    SHAPES,
    SIZES,
    Scene,
    caption,
    class_prompt,
    parse_caption,
    parse_subject_token,
    sample_scene,
    subject_prompt,
    vocabulary,
)
from boothkit.toyworld.subjects import (
    BENCH_SUBJECTS,
    SUBJECTS,
    TEST_SUBJECTS,
    Subject,
    instance_images,
    instance_scenes,
    render_subject,
)

__all__ = [
    "BACKGROUNDS",
    "BACKGROUND_TONES",
    "BENCH_SUBJECTS",
    "COLORS",
    "OBJECT_RGB",
    "POSITIONS",
    "SHAPES",
    "SIZES",
    "SUBJECTS",
    "SUBJECT_THRESHOLD",
    "TEST_SUBJECTS",
    "Measurement",
    "Placement",
    "Scene",
    "Subject",
    "caption",
    "class_prompt",
    "colour_distribution",
    "colour_drift",
    "colour_histogram",
    "instance_images",
    "instance_scenes",
    "is_subject",
    "measure",
    "parse_caption",
    "parse_subject_token",
    "placement",
    "render",
    "render_pattern",
    "render_subject",
    "sample_scene",
    "subject_prompt",
    "subject_score",
    "vocabulary",
]
