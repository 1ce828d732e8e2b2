"""The stage-1 prompt sets: the erase/target pairs of every concept (packs, names files, prompt files), and the
preservation prompts with the retained names expanded over the same templates.

Several concepts are stacked into one list of pairs, each pair keeping its own target (its concept's anchor), so
one closed-form solve over the stacked sums erases all of them (docs/stage1.md, "Many concepts in one model").
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..concepts import (
    FAMILY_ANCHORS,
    PromptPair,
    expand_pack,
    is_names_file,
    load_pack,
    load_templates,
    names_pack,
    pairs_from_files,
    preserve_prompts,
    read_names_file,
)
from ..config import Stage1Config
from ..config.stage1 import NamesConcept
from ..errors import TRCEError


@dataclass(frozen=True)
class ConceptPrompts:
    """One concept's share of the stacked pairs."""

    name: str
    pairs: tuple[PromptPair, ...]
    phrases: tuple[str, ...]  # the erased phrases or names (before templates)
    family: str | None  # template family of a names file; None = the general templates of a pack


def concept_prompts(s1: Stage1Config, entry: str | NamesConcept) -> ConceptPrompts:
    """The erase/target pairs of one concept entry (a pack, a names file, or a {names, family, anchor} item)."""
    if isinstance(entry, NamesConcept) or is_names_file(entry):
        item = entry if isinstance(entry, NamesConcept) else NamesConcept(names=entry)
        family = item.family or s1.family
        anchor = item.anchor or s1.anchor or FAMILY_ANCHORS[family]
        pack = names_pack(item.names, anchor)
        pairs = expand_pack(pack, s1.templates, None, family)
        return ConceptPrompts(pack.name, tuple(pairs), tuple(p for p, _ in pack.phrases), family)
    pack = load_pack(entry)
    pairs = expand_pack(pack, s1.templates, s1.synonyms)
    return ConceptPrompts(pack.name, tuple(pairs), tuple(p for p, _ in pack.phrases), None)


def all_concepts(s1: Stage1Config) -> list[ConceptPrompts]:
    """Every concept of `s1`, in order; prompt files count as one concept named after the erase file."""
    if not s1.concept_entries():
        pairs = pairs_from_files(s1.erase_prompts, s1.target_prompts)
        return [ConceptPrompts(Path(s1.erase_prompts).stem, tuple(pairs), tuple(p.erase for p in pairs), None)]
    concepts = [concept_prompts(s1, entry) for entry in s1.concept_entries()]
    names = [c.name for c in concepts]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise TRCEError(f"concept {twice[0]!r} is given twice (two entries with that name); erase it once")
    return concepts


def retained_prompts(s1: Stage1Config, concepts: list[ConceptPrompts]) -> list[str]:
    """The retained names of `s1.retain` over the templates the names files use (`s1.family`'s, `s1.templates`
    of them); a retained name that is also erased is an error."""
    if s1.retain is None:
        return []
    names = read_names_file(s1.retain)
    erased = {p.casefold(): c.name for c in concepts for p in c.phrases}
    for name in names:
        if name.casefold() in erased:
            raise TRCEError(
                f"{name!r} is both retained ({s1.retain}) and erased (concept {erased[name.casefold()]!r}); "
                "remove it from one of them"
            )
    family = next((c.family for c in concepts if c.family), s1.family)
    templates = load_templates(family)[: s1.templates]
    return [t.replace("{}", name, 1) for name in names for t in templates]


def stage1_prompt_sets(s1: Stage1Config) -> tuple[list[ConceptPrompts], list[str]]:
    """The concepts and the preservation prompts (the preservation set, then the retained names expanded)."""
    concepts = all_concepts(s1)
    keep = preserve_prompts(s1.preserve_prompts, s1.preserve_count) + retained_prompts(s1, concepts)
    return concepts, keep
