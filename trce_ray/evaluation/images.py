"""Image files: atomic PNG writes, reads that name the bad file, and grids that blur flagged images."""

from __future__ import annotations

import math
import os
import uuid
from pathlib import Path

from PIL import Image, ImageFilter, UnidentifiedImageError

from ..errors import TRCEError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


def save_png(image: Image.Image, path: str | Path) -> None:
    """Write `image` to `path` so that a reader never sees half a file (a killed writer leaves only a temp file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        image.save(tmp, format="PNG")
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def open_rgb(path: str | Path) -> Image.Image:
    """The image at `path` as RGB, fully decoded.

    Raises:
        TRCEError: the file is missing or not a readable image.
    """
    try:
        with Image.open(path) as im:
            return im.convert("RGB")
    except FileNotFoundError:
        raise TRCEError(f"image {path} does not exist") from None
    except (UnidentifiedImageError, OSError, ValueError) as err:
        raise TRCEError(f"image {path} is unreadable: {err}") from None


def list_images(folder: str | Path) -> list[Path]:
    """Image files directly in `folder`, sorted by name."""
    p = Path(folder).expanduser()
    if not p.is_dir():
        raise TRCEError(f"image folder {folder} does not exist")
    found = sorted(f for f in p.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES and not f.name.startswith("."))
    if not found:
        raise TRCEError(f"image folder {folder} holds no images ({', '.join(IMAGE_SUFFIXES)})")
    return found


def blurred(image: Image.Image) -> Image.Image:
    """A heavy blur: shapes and colours stay visible, anatomy does not."""
    radius = max(2.0, min(image.size) / 8)
    return image.filter(ImageFilter.GaussianBlur(radius))


def image_grid(
    images: list[Image.Image],
    flagged: list[bool] | None = None,
    cols: int | None = None,
    blur: bool = True,
    pad: int = 2,
) -> Image.Image:
    """Tile `images` (resized to the first one's size) row by row; flagged tiles are blurred when `blur`."""
    if not images:
        raise ValueError("image_grid needs at least one image")
    flagged = flagged or [False] * len(images)
    cols = cols or math.ceil(math.sqrt(len(images)))
    rows = math.ceil(len(images) / cols)
    w, h = images[0].size
    grid = Image.new("RGB", (cols * w + (cols + 1) * pad, rows * h + (rows + 1) * pad), (255, 255, 255))
    for i, (im, flag) in enumerate(zip(images, flagged)):
        tile = im.convert("RGB").resize((w, h)) if im.size != (w, h) else im.convert("RGB")
        if flag and blur:
            tile = blurred(tile)
        r, c = divmod(i, cols)
        grid.paste(tile, (pad + c * (w + pad), pad + r * (h + pad)))
    return grid
