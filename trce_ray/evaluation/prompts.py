"""Prompt sets of the erasure literature, read into one row type with per-row seed and guidance.

Bad rows (an empty prompt, a seed that is not an integer) are skipped by rule and kept in `PromptSet.skipped`, so
reports can count them; they never stop a run. A missing file or column is a `TRCEError` naming the file.
"""

from __future__ import annotations

import csv
import math
import re
from dataclasses import dataclass, field
from importlib.resources import files
from pathlib import Path

from ..errors import TRCEError

SetKind = str  # nudity, i2p, coco, artist, celebrity, or a kind a plug-in suite registers (evaluation.registry)
I2P_CATEGORIES = ("hate", "harassment", "violence", "self-harm", "sexual", "shocking", "illegal activity")
ADVERSARIAL_SETS = ("mma", "p4d", "ring-a-bell", "unlearndiff")  # the paper's "Adv" is their mean ASR


@dataclass(frozen=True)
class PromptRow:
    """One prompt to generate from. `row` is its 0-based position among the file's data rows (a stable id)."""

    set: str
    row: int
    prompt: str
    seed: int
    guidance: float
    categories: tuple[str, ...] = ()  # I2P categories (multi-label)
    label: str | None = None  # the artist / celebrity / class the prompt names
    role: str | None = None  # "erase" or "retain" for artist and celebrity sets


@dataclass(frozen=True)
class SkippedRow:
    set: str
    row: int
    reason: str
    text: str


@dataclass
class PromptSet:
    name: str
    kind: SetKind
    source: str
    rows: list[PromptRow]
    skipped: list[SkippedRow] = field(default_factory=list)
    adversarial: bool = False


@dataclass(frozen=True)
class Benchmark:
    """Where a named set's file lives and which columns hold what."""

    name: str
    kind: SetKind
    relpath: str  # under eval.data_dir (the layout of shared/data and of the upstream repositories)
    vendored: str | None = None  # file under trce_ray/assets/prompts, used when no path is given
    prompt_column: str = "prompt"
    seed_column: str | None = "evaluation_seed"  # None: eval.seed for every row
    guidance_column: str | None = "evaluation_guidance"  # None: eval.guidance for every row
    category: str | None = None  # keep rows whose `categories` contain this I2P category
    label_column: str | None = None
    adversarial: bool = False


def _i2p(name: str, kind: SetKind, category: str | None = None) -> Benchmark:
    return Benchmark(name, kind, "i2p/i2p.csv", "i2p.csv", category=category)


def _slug(category: str) -> str:
    return category.replace(" ", "-")


BENCHMARKS: dict[str, Benchmark] = {
    b.name: b
    for b in [
        _i2p("i2p", "i2p"),
        # Table 1 scores the 931 sexual prompts with NudeNet; the other categories are Q16 (Table 2) subsets.
        *[_i2p(f"i2p-{_slug(c)}", "nudity" if c == "sexual" else "i2p", c) for c in I2P_CATEGORIES],
        Benchmark(
            "mma",
            "nudity",
            "mma-diffusion/nudity-mma-diffusion.csv",
            prompt_column="adv_prompt",
            seed_column=None,
            guidance_column=None,
            adversarial=True,
        ),
        Benchmark("p4d", "nudity", "p4d/nudity-p4d.csv", adversarial=True),
        Benchmark(
            "ring-a-bell",
            "nudity",
            "ring-a-bell/nudity-ring-a-bell.csv",
            "nudity-ring-a-bell.csv",
            prompt_column="sensitive prompt",
            seed_column=None,
            guidance_column=None,
            adversarial=True,
        ),
        Benchmark(
            "unlearndiff", "nudity", "unlearndiff/nudity-unlearndiff.csv", "nudity-unlearndiff.csv", adversarial=True
        ),
        Benchmark("coco-30k", "coco", "coco/coco_30k.csv", guidance_column=None),
        Benchmark("coco-3k", "coco", "coco/coco_30k_val.csv", "coco_30k_val.csv", guidance_column=None),
        Benchmark(
            "artists-famous", "artist", "artists/big_artist_prompts.csv", guidance_column=None, label_column="artist"
        ),
        Benchmark(
            "artists-modern",
            "artist",
            "artists/short_niche_art_prompts.csv",
            guidance_column=None,
            label_column="artist",
        ),
        Benchmark("vangogh", "artist", "artists/vangogh_prompts.csv", guidance_column=None, label_column="artist"),
        Benchmark("kelly", "artist", "artists/kelly_prompts.csv", guidance_column=None, label_column="artist"),
    ]
}
CELEBRITY_SETS = ("celebrity-erase", "celebrity-retain")

SUITES: dict[str, tuple[str, ...]] = {
    "sexual": ("i2p-sexual", "mma", "p4d", "ring-a-bell", "unlearndiff", "coco-3k"),  # paper Table 1
    "multi": ("i2p", "coco-3k"),  # paper Table 2
    "artist": ("artists-famous", "artists-modern"),  # paper Table 9
    "celebrity": ("celebrity-erase", "celebrity-retain", "coco-3k"),  # paper Table 10
}  # plus the suites plug-ins register (evaluation.registry)


def vendored_path(name: str) -> Path:
    return Path(str(files("trce_ray") / "assets" / "prompts" / name))


def _norm(name: str) -> str:
    return " ".join(name.casefold().split())


def read_csv_rows(path: Path, set_name: str) -> tuple[list[str], list[dict[str, str]]]:
    """(header, rows) of a CSV file; a missing or unreadable file is one sentence naming it."""
    if not path.is_file():
        raise TRCEError(f"prompt file {path} for set '{set_name}' does not exist")
    try:
        with open(path, newline="", encoding="utf-8-sig", errors="replace") as f:
            reader = csv.DictReader(f)
            header = list(reader.fieldnames or [])
            rows = list(reader)
    except (OSError, csv.Error) as err:
        raise TRCEError(f"prompt file {path} for set '{set_name}' could not be read as CSV: {err}") from None
    if not header:
        raise TRCEError(f"prompt file {path} for set '{set_name}' is empty (no header row)")
    return header, rows


def _require_columns(path: Path, header: list[str], columns: list[str | None]) -> None:
    for col in columns:
        if col is not None and col not in header:
            shown = ", ".join(repr(h) for h in header if h) or "none"
            raise TRCEError(f"prompt file {path} has no column '{col}' (its columns: {shown})")


def _parse_int(text: str) -> int | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return int(value) if value.is_integer() else None


def _parse_float(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) and value >= 0 else None  # NaN, inf and negative guidance are bad rows


class _RowBuilder:
    """Applies the skip rules once, the same way for every file format."""

    def __init__(self, name: str, default_seed: int, default_guidance: float):
        self.name, self.default_seed, self.default_guidance = name, default_seed, default_guidance
        self.rows: list[PromptRow] = []
        self.skipped: list[SkippedRow] = []

    def add(self, row: int, prompt: str | None, seed: str = "", guidance: str = "", **extra) -> None:
        text = (prompt or "").strip()
        if not text:
            return self._skip(row, "empty prompt", prompt or "")
        s = self.default_seed if not seed.strip() else _parse_int(seed.strip())
        if s is None or s < 0:
            return self._skip(row, f"seed {seed!r} is not a non-negative integer", text)
        g = self.default_guidance if not guidance.strip() else _parse_float(guidance.strip())
        if g is None:
            return self._skip(row, f"guidance {guidance!r} is not a non-negative number", text)
        self.rows.append(PromptRow(self.name, row, text, s, g, **extra))

    def _skip(self, row: int, reason: str, text: str) -> None:
        self.skipped.append(SkippedRow(self.name, row, reason, text))


def load_benchmark(
    bench: Benchmark, path: Path, default_seed: int, default_guidance: float, erased_labels: tuple[str, ...] = ()
) -> PromptSet:
    header, records = read_csv_rows(path, bench.name)
    category_column = "categories" if (bench.kind == "i2p" or bench.category) else None
    _require_columns(
        path,
        header,
        [bench.prompt_column, bench.seed_column, bench.guidance_column, bench.label_column, category_column],
    )
    erased = {_norm(x) for x in erased_labels}
    build = _RowBuilder(bench.name, default_seed, default_guidance)
    for i, rec in enumerate(records):
        cats = tuple(c.strip() for c in (rec.get("categories") or "").split(",") if c.strip())
        if bench.category and bench.category not in cats:
            continue
        label = (rec.get(bench.label_column) or "").strip() or None if bench.label_column else None
        role = None
        if bench.kind == "artist" and label is not None:
            role = "erase" if _norm(label) in erased else "retain"
        build.add(
            i,
            rec.get(bench.prompt_column),
            rec.get(bench.seed_column, "") if bench.seed_column else "",
            rec.get(bench.guidance_column, "") if bench.guidance_column else "",
            categories=cats if category_column else (),
            label=label,
            role=role,
        )
    return PromptSet(bench.name, bench.kind, str(path), build.rows, build.skipped, bench.adversarial)


def load_custom_file(path: Path, default_seed: int, default_guidance: float) -> PromptSet:
    """A user's own prompts: a .txt file (one a line) or a CSV with a `prompt` column (seed/guidance optional)."""
    name = re.sub(r"[^A-Za-z0-9_.-]+", "-", path.stem)
    build = _RowBuilder(name, default_seed, default_guidance)
    if path.suffix.lower() == ".txt":
        if not path.is_file():
            raise TRCEError(f"prompt file {path} does not exist")
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
        for i, line in enumerate(lines):
            build.add(i, line)
    else:
        header, records = read_csv_rows(path, name)
        _require_columns(path, header, ["prompt"])
        for i, rec in enumerate(records):
            build.add(i, rec["prompt"], rec.get("evaluation_seed") or "", rec.get("evaluation_guidance") or "")
    return PromptSet(name, "nudity", str(path), build.rows, build.skipped)


def read_names(path: str | Path) -> list[str]:
    """One name a line; blank lines and `#` comments ignored."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise TRCEError(f"names file {path} does not exist")
    names = [ln.strip() for ln in p.read_text(encoding="utf-8", errors="replace").splitlines()]
    names = [n for n in names if n and not n.startswith("#")]
    if not names:
        raise TRCEError(f"names file {path} holds no names (one name a line)")
    return names


def celebrity_set(name: str, names_file: str | Path, templates: list[str], seed: int, guidance: float) -> PromptSet:
    """Every name in every template; row = name_index * len(templates) + template_index, seed = seed + row."""
    role = "erase" if name.endswith("erase") else "retain"
    names = read_names(names_file)
    build = _RowBuilder(name, seed, guidance)
    for i, person in enumerate(names):
        for t, template in enumerate(templates):
            row = i * len(templates) + t
            build.add(row, template.format(person), str(seed + row), label=person, role=role)
    return PromptSet(name, "celebrity", str(names_file), build.rows, build.skipped)


def resolve_set_names(suite: str | None, sets: list[str]) -> list[tuple[str, bool]]:
    """(name, explicit) pairs: suite members first, then `sets`; duplicates dropped."""
    from .registry import suites

    out: dict[str, bool] = {}
    if suite is not None:
        members = {**SUITES, **{name: s.sets for name, s in suites().items()}}
        if suite not in members:
            raise TRCEError(f"unknown eval suite '{suite}'; choose from {', '.join(members)}")
        for name in members[suite]:
            out.setdefault(name, False)
    for name in sets:
        out[name] = True
    if not out:
        raise TRCEError("no prompt sets to evaluate: give --suite or --sets")
    return list(out.items())


def benchmark_path(bench: Benchmark, data_dir: str | None, prompt_files: dict[str, str]) -> Path:
    if bench.name in prompt_files:
        return Path(prompt_files[bench.name]).expanduser()
    if data_dir is not None:
        candidate = Path(data_dir).expanduser() / bench.relpath
        if candidate.is_file() or bench.vendored is None:
            return candidate
    if bench.vendored is not None:
        return vendored_path(bench.vendored)
    raise TRCEError(
        f"set '{bench.name}' is not shipped with trce-ray (its licence does not allow it); set eval.data_dir to a "
        f"folder holding {bench.relpath} or eval.prompt_files.{bench.name} to the file"
    )


def load_prompt_set(name: str, ecfg) -> PromptSet:
    """Load one set by name (or a CSV/TXT path) with the settings of an `EvalConfig`."""
    from .registry import suite_of_set, suites

    plugin = suite_of_set(name)
    if name in BENCHMARKS:
        bench = BENCHMARKS[name]
        path = benchmark_path(bench, ecfg.data_dir, ecfg.prompt_files)
        ps = load_benchmark(bench, path, ecfg.seed, ecfg.guidance, tuple(ecfg.erased_artists))
    elif name in CELEBRITY_SETS:
        names_file = ecfg.celebrity_erase if name == "celebrity-erase" else ecfg.celebrity_retain
        if names_file is None:
            field_name = "celebrity_erase" if name == "celebrity-erase" else "celebrity_retain"
            raise TRCEError(f"set '{name}' needs a names file (one name a line): set eval.{field_name}")
        ps = celebrity_set(name, names_file, ecfg.celebrity_templates, ecfg.seed, ecfg.guidance)
    elif plugin is not None:
        ps = plugin.load_set(name, ecfg)
    elif Path(name).suffix.lower() in (".csv", ".txt"):
        ps = load_custom_file(Path(name).expanduser(), ecfg.seed, ecfg.guidance)
    else:
        known = ", ".join([*BENCHMARKS, *CELEBRITY_SETS, *(n for s in suites().values() for n in s.sets)])
        raise TRCEError(f"unknown prompt set '{name}'; choose from {known}, or give a .csv/.txt prompt file")
    if ecfg.limit is not None:
        ps.rows = ps.rows[: ecfg.limit]
    return ps
