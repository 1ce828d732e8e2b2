"""How often SDXL's two CLIP tokenizers put the first [EoT] at different positions, on the vendored prompt sets.

diffusers' `tokenizer_2` for SDXL (and SD-2.x) pads with "!" as a special token, so a run of "!" in a prompt becomes
one token per "!" there, while `tokenizer` (and OpenCLIP, which SDXL was trained with) keeps BPE's "!!", "!!!"
tokens (diffusers#4153). The concatenated token states then have each half's [EoT] at its own position; stage 1 takes
the first row where both halves have reached theirs (docs/models.md). The tokenizers are built offline exactly as
the published SDXL ones are configured (pad "<|endoftext|>" and pad "!"), so the counts hold for the real model.

    python bench/sdxl_eot_halves.py
"""

from __future__ import annotations

import csv
from importlib.resources import files

from trce_ray.concepts import expand_pack, load_pack
from trce_ray.models.tokenizer import EOS_ID, clip_tokenizer

SETS = {  # file -> prompt column
    "i2p.csv": "prompt",
    "nudity-ring-a-bell.csv": "sensitive prompt",
    "nudity-unlearndiff.csv": "prompt",
    "coco_30k_val.csv": "prompt",
}


def first_eot(tokenizer, prompts: list[str]):
    ids = tokenizer(prompts, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
    return (ids == EOS_ID).int().argmax(-1)


def main() -> None:
    tok_1, tok_2 = clip_tokenizer(), clip_tokenizer(pad_token="!")
    root = files("trce_ray") / "assets" / "prompts"
    sets = {}
    for name, column in SETS.items():
        with open(root / name, newline="") as f:
            sets[name] = [r[column] for r in csv.DictReader(f) if r[column]]
    sets["sexual pack (15 templates)"] = [p.erase for p in expand_pack(load_pack("sexual"), 15)]
    print("| prompt set | prompts | with '!' | [EoT] differs | largest shift |")
    print("|---|---:|---:|---:|---:|")
    for name, prompts in sets.items():
        shift = (first_eot(tok_2, prompts) - first_eot(tok_1, prompts)).abs()
        bang = sum("!" in p for p in prompts)
        print(f"| {name} | {len(prompts)} | {bang} | {int((shift > 0).sum())} | {int(shift.max())} |")


if __name__ == "__main__":
    main()
