"""The job functions the demo's real RQ worker runs."""

from __future__ import annotations

import time


def resize_image(name: str) -> str:
    """Pretend to resize an image, and succeed."""
    return f"resized {name}"


def import_dataset(name: str) -> None:
    """Pretend to import a dataset, and fail the way real jobs do."""
    msg = f"cannot import {name}: upstream answered 503"
    raise RuntimeError(msg)


def render_map(name: str, seconds: float) -> str:
    """Pretend to render a map for a long time."""
    time.sleep(seconds)
    return f"rendered {name}"
