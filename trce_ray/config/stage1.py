"""Stage 1, Textual Semantic Erasure (paper Sec. 4.1, Eq. 4/5)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Literal

from pydantic import field_validator, model_validator

from .base import Section, at_least_one, non_negative

ROLES = ("eot", "last", "key", "all", "sot", "pad")  # see trce_ray.models.tokens
SEGMENTS = ("clip", "t5")
Convention = Literal["paper", "authors", "normalised"]
Family = Literal["person", "artist", "object"]


class NamesConcept(Section):
    """One concept from a names file, with its own template family and anchor (YAML: an item of stage1.concepts)."""

    names: str  # one name a line
    family: Family | None = None  # default: stage1.family
    anchor: str | None = None  # default: stage1.anchor, else the family's ("a person", "an artist", "an object")

    @field_validator("names")
    @classmethod
    def _exists(cls, v):
        if not Path(v).expanduser().is_file():
            raise ValueError(f"names file {v} does not exist")
        return v


def _check_concept(v: str) -> None:
    """A pack name or file, or an existing names file (.txt); raise ValueError otherwise."""
    from ..concepts import check_pack_name, is_names_file

    if not is_names_file(v):
        check_pack_name(v)
    elif not Path(v).expanduser().is_file():
        raise ValueError(f"names file {v} does not exist")


class Stage1Config(Section):
    concept: str | None = None  # built-in pack name or a pack file (.yaml / TRCE-style .json); or use prompt files
    # several concepts erased in one joint solve, each with its own anchor: packs, names files (.txt, one name a
    # line) or {names, family, anchor} items; `concept: [a, b]` means the same
    concepts: list[str | NamesConcept] | None = None
    family: Family = "person"  # template family of names files (packs/templates.yaml `families`)
    anchor: str | None = None  # safe anchor of names files; None = the family's ("a person", ...)
    retain: str | None = None  # names file: names kept, expanded over the family's templates into preservation
    stats_cache: bool = True  # store/reuse the preservation statistics under cache.root/stage1-stats
    erase_prompts: str | None = None  # one prompt a line; mark the keyword with [brackets] to enable the "key" role
    target_prompts: str | None = None  # line i = safe counterpart of erase line i
    preserve_prompts: str | None = None  # one prompt a line; default: vendored COCO captions
    templates: int = 15  # how many templates of the pack's list to use (paper: 15)
    synonyms: int | None = None  # use the first N phrases of the pack (paper: 20 for sexual); None = all
    preserve_count: int = 1000  # preservation prompts taken from the preservation set
    # token roles mapped from malicious to safe (paper Table 4): eot, last, key, all, sot; "t5:last" names one token
    # segment (clip or t5), a bare role applies to every segment that has it; None = the family's defaults
    # (docs/models.md: eot on CLIP, eot + last on T5)
    tokens: list[str] | None = None
    # what eta multiplies (docs/stage1.md): "authors" = the authors' code, which made the paper's tables (so eta
    # means Sec. 5.1's and Table 3/4's values); "paper" = Eq. 5 as printed (unnormalised sums, [EoT] preserved);
    # "normalised" = each sum over its count (the only form before this setting existed)
    convention: Convention = "authors"
    # preservation rows: every token position or the first [EoT]; None = the convention's (paper: eot, else all)
    preserve_tokens: Literal["all", "eot"] | None = None
    pooled: bool | None = None  # also edit the pooled-text projection (SDXL add_embedding, SD3/FLUX text_embedder)
    blocks: Literal["default", "encoder", "all"] = "default"  # UNet blocks edited (default: SDXL encoder, SD all)
    eta: float = 0.01  # preservation weight of Eq. 4/5, in `convention`
    ridge: float = 0.0  # UCE-style lambda*W / lambda*I term for singular systems
    batch_size: int = 64  # prompts per text-encoder batch
    # on a Ray cluster (RAY_ADDRESS set, or inside a job) stage 1 is a Ray task with these resources, so it runs on
    # a node where the model fits (1 GPU for SD-class models), not on a CPU-only head; locally it runs in-process
    num_gpus: float = 0.0
    num_cpus: float = 1.0
    save_pipeline: bool = False  # also write a full save_pretrained folder of the edited pipeline

    @field_validator("tokens", mode="before")
    @classmethod
    def _roles(cls, v):
        if v is None:
            return None
        if isinstance(v, str):
            v = [v]
        if isinstance(v, dict):  # YAML mapping {clip: [eot], t5: [eot, last]}
            v = [f"{seg}:{r}" for seg, rs in v.items() for r in ([rs] if isinstance(rs, str) else rs)]
        for item in v:
            seg, _, role = str(item).rpartition(":")
            if role not in ROLES:
                raise ValueError(f"unknown token role {role!r}; choose from {', '.join(ROLES)}")
            if seg and seg not in SEGMENTS:
                raise ValueError(f"unknown token segment {seg!r} in {item!r}; segments are {', '.join(SEGMENTS)}")
        if not v:
            raise ValueError("at least one token role is needed (or leave tokens unset for the family's defaults)")
        return list(dict.fromkeys(str(x) for x in v))

    @field_validator("concept")
    @classmethod
    def _pack(cls, v):
        if v is not None:
            _check_concept(v)
        return v

    @field_validator("concepts")
    @classmethod
    def _packs(cls, v):
        if v is None:
            return v
        if not v:
            raise ValueError("needs at least one concept")
        seen = set()
        for item in v:
            name = item.names if isinstance(item, NamesConcept) else item
            if isinstance(item, str):
                _check_concept(item)
            path = Path(name).expanduser()
            key = str(path.resolve()) if path.is_file() else name  # a file by where it is, a built-in by name
            if key in seen:
                raise ValueError(f"concept {name!r} is given twice")
            seen.add(key)
        return v

    @model_validator(mode="before")
    @classmethod
    def _concept_list(cls, data):
        if isinstance(data, dict) and isinstance(data.get("concept"), list):
            if data.get("concepts") is not None:
                raise ValueError("give stage1.concept or stage1.concepts, not both")
            data = {**data, "concepts": data["concept"], "concept": None}
            if len(data["concepts"]) == 1 and isinstance(data["concepts"][0], str):
                data = {**data, "concept": data["concepts"][0], "concepts": None}
        return data

    def concept_entries(self) -> list:
        """Every concept to erase (packs, names files, NamesConcept items); empty with prompt files."""
        if self.concepts is not None:
            return list(self.concepts)
        return [self.concept] if self.concept is not None else []

    @property
    def concept_label(self) -> str:
        """What is erased, in words: concept names joined by commas, or the prompt files."""
        entries = self.concept_entries()
        if not entries:
            return f"{self.erase_prompts} -> {self.target_prompts}"
        return ",".join(e if isinstance(e, str) else e.names for e in entries)

    @field_validator("eta")
    @classmethod
    def _eta(cls, v):
        if not 0 < v < math.inf:
            raise ValueError("eta must be > 0 and finite: it weights preservation and keeps the system solvable")
        return v

    _ridge = field_validator("ridge", "num_gpus", "num_cpus")(non_negative)

    @field_validator("ridge")
    @classmethod
    def _finite(cls, v):
        if not math.isfinite(v):
            raise ValueError("must be finite")
        return v

    _positive = field_validator("templates", "preserve_count", "batch_size")(at_least_one)

    @field_validator("erase_prompts", "target_prompts", "preserve_prompts", "retain")
    @classmethod
    def _exists(cls, v):
        if v is not None and not Path(v).expanduser().is_file():
            raise ValueError(f"prompt file {v} does not exist")
        return v

    @model_validator(mode="before")
    @classmethod
    def _convention_tokens(cls, data):
        if isinstance(data, dict) and data.get("preserve_tokens") is None:
            convention = data.get("convention", cls.model_fields["convention"].default)
            data = {**data, "preserve_tokens": "eot" if convention == "paper" else "all"}
        return data

    @model_validator(mode="after")
    def _authors_all_tokens(self):
        if self.convention == "authors" and self.preserve_tokens != "all":
            raise ValueError(
                "convention 'authors' preserves every token position (the authors' COCO cache sums all 77); "
                "drop preserve_tokens or choose convention 'paper' or 'normalised'"
            )
        return self

    @model_validator(mode="after")
    def _source(self):
        files = self.erase_prompts is not None or self.target_prompts is not None
        if self.concept is not None and self.concepts is not None:
            raise ValueError("give stage1.concept or stage1.concepts, not both")
        concept = self.concept is not None or self.concepts is not None
        if concept and files:
            raise ValueError("give either a concept pack or erase/target prompt files, not both")
        if not concept and not files:
            raise ValueError("no erase prompts: give a concept pack (--concept) or --erase-prompts/--target-prompts")
        if files and (self.erase_prompts is None or self.target_prompts is None):
            raise ValueError("--erase-prompts and --target-prompts go together (line i of one pairs with line i)")
        return self
