"""Labelled image grids (PNG) of toy generations, one row of images per prompt group."""

from __future__ import annotations

from pathlib import Path

import torch
from PIL import Image, ImageDraw

from ..artifacts import atomic_file


def save_grid(
    groups: list[tuple[str, torch.Tensor]], path: str | Path, title: str = "", scale: int = 3, label_width: int = 120
) -> None:
    """`groups`: (label, images [N, 3, H, W] in [-1, 1]); each group becomes one labelled row."""
    columns = max(len(x) for _, x in groups)
    h, w = groups[0][1].shape[-2:]
    cell_h, cell_w = h * scale, w * scale
    top = 16 if title else 0
    canvas = Image.new("RGB", (label_width + columns * (cell_w + 2), top + len(groups) * (cell_h + 2)), "white")
    draw = ImageDraw.Draw(canvas)
    if title:
        draw.text((4, 2), title, fill="black")
    for r, (label, images) in enumerate(groups):
        y = top + r * (cell_h + 2)
        draw.text((4, y + cell_h // 2 - 5), label, fill="black")
        pixels = ((images.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).cpu().numpy()
        for c, img in enumerate(pixels):
            tile = Image.fromarray(img).resize((cell_w, cell_h), Image.NEAREST)
            canvas.paste(tile, (label_width + c * (cell_w + 2), y))
    with atomic_file(path) as tmp:
        canvas.save(tmp, format="PNG")
