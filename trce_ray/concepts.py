"""Concept augmentation: packs of malicious phrases with safe anchors, expanded over prompt templates.

A pack is a YAML file (`name`, `anchor`, `phrases` as strings or {phrase, anchor}) or a TRCE-style JSON list of
[malicious, anchor] pairs. Built-in packs live in `trce_ray/packs/`. Prompt files hold one prompt a line; a
[bracketed] span marks the keyword that the "key" token role maps. A names file (`.txt`, one name a line) plus a
template family (person, artist, object: `families` in packs/templates.yaml) and an anchor makes a pack of
celebrities or artists: every name over every template of the family, each mapped to the same template filled
with the anchor.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path

import yaml

from .errors import TRCEError

PACK_DIR = files("trce_ray") / "packs"
COCO_PRESERVE = files("trce_ray") / "assets" / "coco_preserve.txt"


@dataclass(frozen=True)
class PromptPair:
    """An erase prompt and its safe counterpart; key spans are character ranges of the keyword in each."""

    erase: str
    target: str
    erase_key: tuple[int, int] | None = None
    target_key: tuple[int, int] | None = None


@dataclass(frozen=True)
class ConceptPack:
    name: str
    phrases: tuple[tuple[str, str], ...]  # (malicious phrase, safe anchor)
    description: str = ""


def builtin_packs() -> list[str]:
    return sorted(
        p.name[: -len(".yaml")] for p in PACK_DIR.iterdir() if p.name.endswith(".yaml") and p.name != "templates.yaml"
    )


def check_pack_name(name: str) -> None:
    """Raise ValueError (config validation) unless `name` is a built-in pack or an existing pack file."""
    if name in builtin_packs() or Path(name).expanduser().is_file():
        return
    raise ValueError(
        f"unknown concept pack {name!r}; built-in packs: {', '.join(builtin_packs())}, or a pack file path"
    )


def load_pack(name: str) -> ConceptPack:
    path = PACK_DIR / f"{name}.yaml" if name in builtin_packs() else Path(name).expanduser()
    try:
        text = path.read_text()
        data = json.loads(text) if str(path).endswith(".json") else yaml.safe_load(text)
    except FileNotFoundError:
        raise TRCEError(f"unknown concept pack {name!r}; built-in packs: {', '.join(builtin_packs())}") from None
    except (json.JSONDecodeError, yaml.YAMLError) as err:
        raise TRCEError(f"concept pack {path} cannot be parsed: {str(err).splitlines()[0]}") from None
    if isinstance(data, list):  # TRCE's format: [[malicious, anchor], ...]
        if not all(isinstance(p, list) and len(p) == 2 and all(isinstance(s, str) for s in p) for p in data):
            raise TRCEError(f"concept pack {path}: a JSON pack must be a list of [malicious, anchor] string pairs")
        return ConceptPack(Path(name).stem, tuple((m, s) for m, s in data))
    if not isinstance(data, dict) or not isinstance(data.get("phrases"), list):
        raise TRCEError(f"concept pack {path} needs a 'phrases' list")
    default_anchor = data.get("anchor")
    pairs = []
    for i, item in enumerate(data["phrases"]):
        phrase, anchor = (
            (item, default_anchor)
            if isinstance(item, str)
            else (item.get("phrase"), item.get("anchor", default_anchor))
        )
        if not phrase or not anchor:
            raise TRCEError(f"concept pack {path}: phrase {i} needs a phrase and an anchor (or a pack-level 'anchor')")
        pairs.append((str(phrase), str(anchor)))
    if not pairs:
        raise TRCEError(f"concept pack {path} has no phrases")
    return ConceptPack(str(data.get("name", Path(name).stem)), tuple(pairs), str(data.get("description", "")))


def load_templates(family: str | None = None) -> list[str]:
    """The general templates, or those of a names-file family (person, artist, object)."""
    data = yaml.safe_load((PACK_DIR / "templates.yaml").read_text())
    if family is None:
        return list(data["templates"])
    if family not in data["families"]:
        raise TRCEError(f"unknown template family {family!r}; choose from {', '.join(FAMILIES)}")
    return list(data["families"][family])


FAMILIES = ("person", "artist", "object")
FAMILY_ANCHORS = {"person": "a person", "artist": "an artist", "object": "an object"}  # when no anchor is given


def is_names_file(entry: str) -> bool:
    """A concept entry that names a names file (one name a line) rather than a pack."""
    return str(entry).endswith(".txt")


def read_names_file(path: str | Path) -> list[str]:
    """The names of a names file, one a line; a blank or repeated line is an error (it would weight a name twice
    or hide a typo)."""
    p = Path(path).expanduser()
    try:
        lines = p.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise TRCEError(f"names file {path} does not exist") from None
    except UnicodeDecodeError:
        raise TRCEError(f"names file {path} is not UTF-8 text") from None
    while lines and not lines[-1].strip():
        lines.pop()
    if not lines:
        raise TRCEError(f"names file {path} is empty: it needs one name a line")
    seen: dict[str, int] = {}
    for i, line in enumerate(lines, 1):
        name = line.strip()
        if not name:
            raise TRCEError(f"names file {path} has a blank line {i}: remove it (one name a line)")
        if name.casefold() in seen:
            raise TRCEError(f"names file {path} repeats {name!r} (lines {seen[name.casefold()]} and {i})")
        seen[name.casefold()] = i
    return [line.strip() for line in lines]


def names_pack(path: str | Path, anchor: str) -> ConceptPack:
    """A pack of every name in a names file, each mapped to `anchor`."""
    return ConceptPack(Path(path).stem, tuple((name, anchor) for name in read_names_file(path)))


def _fill(template: str, phrase: str) -> tuple[str, tuple[int, int]]:
    start = template.index("{}")
    return template.replace("{}", phrase, 1), (start, start + len(phrase))


def expand_pack(
    pack: ConceptPack, n_templates: int = 15, n_synonyms: int | None = None, family: str | None = None
) -> list[PromptPair]:
    """Every (phrase, template) combination: erase = template(phrase), target = template(anchor); the general
    templates, or those of `family`."""
    templates = load_templates(family)
    if n_templates > len(templates):
        which = f"the {family} family" if family else "the template list"
        raise TRCEError(f"stage1.templates={n_templates} but {which} has only {len(templates)} templates")
    phrases = pack.phrases
    if n_synonyms is not None:
        if n_synonyms > len(phrases):
            raise TRCEError(f"stage1.synonyms={n_synonyms} but pack {pack.name!r} has {len(phrases)} phrases")
        phrases = phrases[:n_synonyms]
    pairs = []
    for phrase, anchor in phrases:
        for template in templates[:n_templates]:
            erase, ek = _fill(template, phrase)
            target, tk = _fill(template, anchor)
            pairs.append(PromptPair(erase, target, ek, tk))
    return pairs


def read_prompt_file(path: str | Path, what: str = "prompt") -> list[str]:
    """Non-empty lines of a prompt file; an empty set is an error."""
    p = Path(path).expanduser()
    try:
        lines = [line.strip() for line in p.read_text(encoding="utf-8").splitlines()]
    except FileNotFoundError:
        raise TRCEError(f"{what} file {path} does not exist") from None
    except UnicodeDecodeError:
        raise TRCEError(f"{what} file {path} is not UTF-8 text") from None
    prompts = [line for line in lines if line]
    if not prompts:
        raise TRCEError(f"{what} file {path} is empty: it needs one prompt a line")
    return prompts


def parse_marked(line: str) -> tuple[str, tuple[int, int] | None]:
    """'a photo of [nudity]' -> ('a photo of nudity', (11, 17)); no brackets -> (line, None)."""
    if "[" not in line:
        return line, None
    start, end = line.index("["), line.find("]")
    if end < start:
        raise TRCEError(f"prompt {line!r} opens a [keyword] span without closing it")
    text = line[:start] + line[start + 1 : end] + line[end + 1 :]
    return text, (start, end - 1)


def pairs_from_files(erase_file: str, target_file: str) -> list[PromptPair]:
    erase = read_prompt_file(erase_file, "erase-prompt")
    target = read_prompt_file(target_file, "target-prompt")
    if len(erase) != len(target):
        raise TRCEError(
            f"erase-prompt file {erase_file} has {len(erase)} prompts but target-prompt file {target_file} has "
            f"{len(target)}; line i of the target file must be the safe counterpart of line i"
        )
    pairs = []
    for e, t in zip(erase, target):
        (et, ek), (tt, tk) = parse_marked(e), parse_marked(t)
        pairs.append(PromptPair(et, tt, ek, tk))
    return pairs


def preserve_prompts(path: str | None, count: int) -> list[str]:
    """The first `count` preservation prompts of `path`, or of the vendored COCO captions (CC BY 4.0)."""
    prompts = read_prompt_file(path, "preserve-prompt") if path else COCO_PRESERVE.read_text().splitlines()
    return prompts[:count]
