"""`trce-ray campaign`: many erasures as one job. This module holds the plan: the campaign file read, every entry
turned into a full, validated config (paths absolute where the command is issued), and the output folder checked.

    campaign.yaml:                              # a list of entries, or {defaults: {...}, erasures: [...]}
      defaults: {suite: toy, set: {eval.limit: 8}}    # fields every entry gets unless it gives its own
      erasures:
        - name: red                             # its folder DIR/red/ and its MLflow run
          concept: toy-red                      # a pack, a names file, or a list of them (one joint solve)
          stages: text                          # text (default), visual or text,visual
          suite: toy                            # eval suite (or sets: [...])
          config: jobs/configs/base.yaml        # optional base config
          set: {eval.toy_target: red}           # dotted overrides, as --set

Everything is read and validated before anything is written; a bad entry fails with one sentence naming it.
Running the plan (Ray tasks, MLflow runs, the summary table) is trce_ray/campaign_run.py.
"""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import yaml

from .config import TRCEConfig, load_config
from .errors import ConfigError, TRCEError
from .sweep import METRICS_FILE

ENTRY_FIELDS = ("name", "concept", "concepts", "stages", "suite", "sets", "config", "set")
RECORD_FILE = "campaign_config.json"  # every erasure's resolved config: what --resume compares
SUMMARY_STEM = "campaign"  # campaign.csv, campaign.md
SHARED_ENTRIES = ("images", "shared")  # work the erasures share (sweep.run_trial_folder), beside their folders
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,79}")


@dataclass(frozen=True)
class Erasure:
    """One entry of a campaign: its folder name, its stages and its full config (the one object its task gets)."""

    name: str
    stages: tuple[str, ...]
    cfg: TRCEConfig

    def record(self) -> dict:
        return {"stages": ",".join(self.stages), "config": self.cfg.model_dump(mode="json")}


def read_campaign(path: str | Path) -> tuple[dict, list]:
    """(defaults, entries) of a campaign file: a YAML list of entries, or a mapping {defaults, erasures}."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise ConfigError(f"campaign file {path} does not exist")
    try:
        data = yaml.safe_load(p.read_text())
    except yaml.YAMLError as err:
        raise ConfigError(f"campaign file {path} is not valid YAML: {str(err).splitlines()[0]}") from None
    defaults = {}
    if isinstance(data, dict):
        unknown = sorted(set(data) - {"defaults", "erasures"})
        if unknown:
            raise ConfigError(
                f"campaign file {path} has an unknown top-level key '{unknown[0]}'; it holds `erasures:` (a list) "
                "and optionally `defaults:`"
            )
        defaults, data = data.get("defaults") or {}, data.get("erasures")
    if not data:
        raise ConfigError(f"campaign file {path} lists no erasures: give a list of entries, each with a name")
    if not isinstance(data, list):
        raise ConfigError(f"campaign file {path} must hold a list of erasures, not a {type(data).__name__}")
    if not isinstance(defaults, dict):
        raise ConfigError(f"campaign file {path}: defaults must be a mapping of entry fields")
    _check_fields(defaults, "the campaign's defaults", ENTRY_FIELDS[1:])
    return defaults, data


def _check_fields(entry: dict, where: str, known=ENTRY_FIELDS) -> None:
    unknown = [k for k in entry if k not in known]
    if unknown:
        raise ConfigError(f"{where} has an unknown field '{unknown[0]}'; its fields are {', '.join(known)}")
    if "concept" in entry and "concepts" in entry:
        raise ConfigError(f"{where} gives both concept and concepts; give one (a name or a list)")
    if not isinstance(entry.get("set", {}), dict):
        raise ConfigError(f"{where}: set must be a mapping of dotted config keys to values (e.g. eval.limit: 8)")


def _entry_name(entry, index: int) -> str:
    where = f"campaign entry {index + 1}"
    if not isinstance(entry, dict):
        raise ConfigError(f"{where} must be a mapping with at least a name, not a {type(entry).__name__}")
    _check_fields(entry, where)
    name = entry.get("name")
    if not isinstance(name, str) or not _NAME.fullmatch(name) or name in SHARED_ENTRIES:
        raise ConfigError(
            f"{where} needs a name usable as a folder name (letters, digits, . _ + -, at most 80, not "
            f"{' or '.join(SHARED_ENTRIES)}; got {name!r})"
        )
    return name


def entry_erasure(entry: dict, defaults: dict, output: Path, tracking: dict) -> Erasure:
    """The entry (over the defaults) as a validated config: base config, then concept/suite/sets, then `set`, then
    the campaign's tracking store, so every erasure's run nests under the campaign's run."""
    from .config.paths import WRITTEN_FIELDS, check_job_paths, written_paths
    from .sweep import check_eval_sets
    from .workflow import parse_stages

    name = entry["name"]
    fields = {**defaults, **{k: v for k, v in entry.items() if k != "name"}}
    if "concept" in entry or "concepts" in entry:  # the entry's concept replaces the defaults' in either spelling
        fields = {k: v for k, v in fields.items() if k not in ("concept", "concepts") or k in entry}
    overrides = {
        "stage1.concept": fields.get("concept", fields.get("concepts")),
        "eval.suite": fields.get("suite"),
        "eval.sets": fields.get("sets"),
        **(defaults.get("set") or {}),
        **(entry.get("set") or {}),
        **tracking,
        "output": str(output / name),
    }
    where = f"campaign entry '{name}'"
    try:
        cfg = load_config(fields.get("config"), overrides)
        stages = parse_stages(str(fields.get("stages", "text")))
        if "text" in stages and cfg.stage1 is None:
            raise ConfigError("its stages erase with stage 1 but it names no concept (concept: a pack or names file)")
        if not (cfg.eval.suite or cfg.eval.sets):
            raise ConfigError("every erasure is evaluated: give suite (e.g. toy, sexual) or sets")
        check_eval_sets(cfg)
        fields_written = tuple(f for f in WRITTEN_FIELDS if "visual" in stages or f != "cache.root")
        check_job_paths(written_paths(cfg, fields_written), cfg.allow_job_local_paths)
    except TRCEError as err:
        raise ConfigError(f"{where}: {err}") from None
    return Erasure(name, stages, cfg)


def plan_campaign(path: str | Path, output: str | Path, tracking: dict) -> list[Erasure]:
    """Every erasure of the campaign file, validated; one sentence for the first bad entry."""
    defaults, entries = read_campaign(path)
    names = [_entry_name(e, i) for i, e in enumerate(entries)]
    seen = set()
    for name in names:
        if name in seen:
            raise ConfigError(f"campaign erasure name '{name}' is given twice; every erasure needs its own folder")
        seen.add(name)
    out = Path(output)
    return [entry_erasure(e, defaults, out, tracking) for e in entries]


def check_campaign_output(out: Path, erasures: list[Erasure], resume: bool, overwrite: bool) -> set[str]:
    """Check `out` without writing anything; return the names of the erasures finished there (kept on --resume)."""
    if not out.exists():
        return set()
    if not (resume or overwrite):
        raise TRCEError(f"output folder {out} already exists; pass --resume to continue that campaign or --overwrite")
    if not resume:
        from .artifacts import check_replaceable

        check_replaceable(out)
        return set()
    record = out / RECORD_FILE
    if not record.is_file():
        raise TRCEError(f"{out} is not a campaign folder (no {RECORD_FILE}); choose another --output")
    recorded = json.loads(record.read_text())
    kept = set()
    for e in erasures:
        if (out / e.name / METRICS_FILE).is_file():
            if recorded.get(e.name) != e.record():
                raise TRCEError(
                    f"campaign erasure '{e.name}' changed since it finished in {out / e.name}; give it a new name, "
                    "delete that folder, or pass --overwrite"
                )
            kept.add(e.name)
    return kept


def prepare_campaign_output(out: Path, erasures: list[Erasure], resume: bool, overwrite: bool) -> None:
    """Write the campaign folder's record and ownership marker; clear what --overwrite replaces, and the folders of
    unfinished erasures whose config changed since the last run (their partial work does not apply)."""
    from .artifacts import MARKER, remove_output, write_marker

    if out.exists() and overwrite and not resume:
        remove_output(out)
    recorded = json.loads((out / RECORD_FILE).read_text()) if (out / RECORD_FILE).is_file() else {}
    for e in erasures:
        folder = out / e.name
        if folder.is_dir() and not (folder / METRICS_FILE).is_file() and recorded.get(e.name) != e.record():
            shutil.rmtree(folder)
    out.mkdir(parents=True, exist_ok=True)
    from .artifacts import write_json

    write_json(out / RECORD_FILE, {**recorded, **{e.name: e.record() for e in erasures}})
    owned = set()
    if (out / MARKER).is_file():
        owned = set(json.loads((out / MARKER).read_text()).get("entries", []))
    names = [RECORD_FILE, f"{SUMMARY_STEM}.csv", f"{SUMMARY_STEM}.md", *SHARED_ENTRIES, *recorded]
    write_marker(out, sorted(owned | set(names) | {e.name for e in erasures}))


def report_runs(folder: str | Path) -> list:
    """What `trce-ray report FOLDER` shows: a campaign folder's finished erasures (one row each, by name), else the
    eval folder itself."""
    from .evaluation.report import RunMetrics, from_folder

    p = Path(folder).expanduser()
    if not (p / RECORD_FILE).is_file():
        return [from_folder(p)]
    names = json.loads((p / RECORD_FILE).read_text())
    evals = [(n, p / n / "eval") for n in names if (p / n / METRICS_FILE).is_file()]
    if not evals:
        raise TRCEError(f"campaign folder {p} holds no finished erasure yet")
    return [RunMetrics(n, from_folder(f).metrics, str(f / "metrics.json")) for n, f in evals]
