"""Data: instance-photo checks and loading, aspect-ratio buckets, captions (and latent caches)."""

from boothkit.data.buckets import assign_bucket, make_buckets
from boothkit.data.captions import instance_prompts, read_captions
from boothkit.data.images import (
    CheckReport,
    FileReport,
    Status,
    check_folder,
    load_image,
    parse_color,
    resize_and_crop,
)

__all__ = [
    "CheckReport",
    "FileReport",
    "Status",
    "assign_bucket",
    "check_folder",
    "instance_prompts",
    "load_image",
    "make_buckets",
    "parse_color",
    "read_captions",
    "resize_and_crop",
]
