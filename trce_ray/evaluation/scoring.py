"""Scoring: one actor class runs every configured detector on a batch of image files; results are cached per
(image, detector) beside the images, so a rerun scores only what is new.

Each row names the detectors it needs (`detectors`, comma-separated): NudeNet for nudity sets, Q16 for I2P, FID
features and CLIP score for COCO, the user's classifiers for celebrity and artist sets, and the detectors of plug-in
suites (`evaluation.registry`, e.g. the toy world's classifier) for theirs.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import TRCEError
from .images import open_rgb

SCORE_COLUMNS = ("nudenet", "q16", "clip", "fid", "face", "style")  # plus plug-in detectors' (score_columns)
FEATURE_COLUMNS = ("fid",)  # float32 vectors, stored as bytes; plus plug-in detectors' (feature_columns)


def score_columns() -> tuple[str, ...]:
    from .registry import plugin_columns

    return SCORE_COLUMNS + plugin_columns()


def feature_columns() -> tuple[str, ...]:
    from .registry import plugin_feature_columns

    return FEATURE_COLUMNS + plugin_feature_columns()


@dataclass(frozen=True)
class ScoringSpec:
    """Detector settings for a scoring actor (frozen; passed explicitly)."""

    image_root: str
    nudenet: bool = False
    q16_clip: str | None = None
    q16_embeddings: str | None = None
    clip_model: str | None = None
    fid_features: str | None = None
    fid_weights: str | None = None
    face_classifier: str | None = None
    style_classifier: str | None = None
    classifier_options: tuple[tuple[str, object], ...] = ()
    candidates: tuple[str, ...] = ()  # names a face/style classifier chooses from
    plugin_columns: tuple[str, ...] = ()  # plug-in detector columns to fill (e.g. "toy": the toy classifier)
    device: str = "auto"
    threads: int = 1


def _file_tag(path: str | None) -> str | None:
    """A path plus its size and mtime: a replaced weights file gives new detector ids (and fresh scores)."""
    if path is None:
        return None
    p = Path(path).expanduser()
    if p.is_file():
        st = p.stat()
        return f"{p.resolve()}:{st.st_size}:{int(st.st_mtime)}"
    return str(p.resolve()) if p.exists() else path


def _tag(*parts) -> str:
    return hashlib.sha256(json.dumps(parts, default=str).encode()).hexdigest()[:10]


def detector_ids(spec: ScoringSpec) -> dict[str, str]:
    """Cache ids of the detectors `spec` enables (they change when the detector's settings or weights do)."""
    ids = {}
    if spec.nudenet:
        from importlib.metadata import version

        ids["nudenet"] = f"nudenet-{version('nudenet')}"
    if spec.q16_clip and spec.q16_embeddings:
        ids["q16"] = "q16-" + _tag(_file_tag(spec.q16_clip), _file_tag(spec.q16_embeddings))
    if spec.clip_model:
        ids["clip"] = "clip-" + _tag(_file_tag(spec.clip_model))
    if spec.fid_features:
        ids["fid"] = "fid-" + _tag(_file_tag(spec.fid_features), _file_tag(spec.fid_weights))
    opts = sorted(spec.classifier_options)
    if spec.face_classifier:
        ids["face"] = "face-" + _tag(spec.face_classifier, opts, sorted(spec.candidates))
    if spec.style_classifier:
        ids["style"] = "style-" + _tag(spec.style_classifier, opts, sorted(spec.candidates))
    for det in _wanted_plugins(spec):
        tag = _tag(_file_tag(det.weights()))
        ids.update({c: f"{c}-{tag}" for c in det.columns})
    return ids


def _wanted_plugins(spec: ScoringSpec) -> list:
    from .registry import plugin_detectors

    return [d for d in plugin_detectors() if set(d.columns) & set(spec.plugin_columns)]


class ImageScorer:
    """Ray Data callable class: adds one column per detector (empty where a row did not ask for it)."""

    def __init__(self, spec: ScoringSpec):
        import torch

        from ..models.loading import resolve_device

        self.spec = spec
        device = resolve_device(spec.device)
        if device == "cpu":
            torch.set_num_threads(max(1, spec.threads))
        self.root = Path(spec.image_root)
        self.detectors: dict[str, object] = {}
        if spec.nudenet:
            from .nudity import NudeNetDetector

            self.detectors["nudenet"] = NudeNetDetector(threads=spec.threads)
        if spec.q16_clip and spec.q16_embeddings:
            from .q16 import Q16Detector

            self.detectors["q16"] = Q16Detector(spec.q16_clip, spec.q16_embeddings, device)
        if spec.clip_model:
            from .clip import ClipScoreDetector

            self.detectors["clip"] = ClipScoreDetector(spec.clip_model, device)
        if spec.fid_features:
            from .fid import FidFeatureDetector

            self.detectors["fid"] = FidFeatureDetector(spec.fid_features, spec.fid_weights, device)
        from .identity import load_classifier

        opts = dict(spec.classifier_options)
        if spec.face_classifier:
            self.detectors["face"] = load_classifier(spec.face_classifier, opts, "eval.face_classifier")
        if spec.style_classifier:
            self.detectors["style"] = load_classifier(spec.style_classifier, opts, "eval.style_classifier")
        self.plugin_columns: set[str] = set()
        for det in _wanted_plugins(spec):
            scorer = det.build(device)
            self.detectors.update({c: scorer for c in det.columns})
            self.plugin_columns.update(det.columns)
        self.columns, self.features = score_columns(), feature_columns()

    def score(self, paths: list[Path], prompts: list[str], wanted: list[set[str]]) -> dict[str, list]:
        images = [open_rgb(p) for p in paths]  # also the readability check NudeNet's own reader lacks
        cols: dict[str, list] = {name: [None] * len(paths) for name in self.columns}
        for name, det in self.detectors.items():
            idx = [i for i, w in enumerate(wanted) if name in w]
            if not idx:
                continue
            sub_images = [images[i] for i in idx]
            if name == "nudenet":
                values = [json.dumps(v, sort_keys=True) for v in det([str(paths[i]) for i in idx])]
            elif name == "q16":
                values = det(sub_images)
            elif name == "clip":
                values = det(sub_images, [prompts[i] for i in idx])
            elif name == "fid":
                values = [row.astype(np.float32).tobytes() for row in det(sub_images)]
            elif name in self.plugin_columns:
                values = det(sub_images, name)
                if name in self.features:
                    values = [np.asarray(row, np.float32).tobytes() for row in values]
            else:
                values = det.predict(sub_images, list(self.spec.candidates))
            for i, v in zip(idx, values):
                cols[name][i] = v
        return cols

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        paths = [self.root / str(r) for r in batch["relpath"]]
        wanted = [set(str(d).split(",")) - {""} for d in batch["detectors"]]
        try:
            cols = self.score(paths, [str(p) for p in batch["prompt"]], wanted)
            error = ""
        except TRCEError as err:
            # Returned, not raised: Ray Data would wrap it into a traceback; the driver raises it as one sentence.
            cols = {name: [None] * len(paths) for name in self.columns}
            error = str(err)
        batch["error"] = np.array([error] * len(paths), dtype=object)
        for name, values in cols.items():
            if name in ("q16", "clip"):
                batch[name] = np.array([np.nan if v is None else float(v) for v in values], dtype=np.float64)
            elif name in self.features:
                batch[name] = np.array([b"" if v is None else v for v in values], dtype=object)
            else:
                batch[name] = np.array(["" if v is None else str(v) for v in values], dtype=object)
        return batch


# ---- the score cache: <root>/<set>/.scores/<detector id>.parquet with columns relpath, value ----------------


def _cache_file(root: Path, set_name: str, det_id: str) -> Path:
    return root / set_name / ".scores" / f"{det_id}.parquet"


def read_cache(root: Path, set_name: str, det_id: str) -> dict[str, object]:
    import pyarrow.parquet as pq

    f = _cache_file(root, set_name, det_id)
    if not f.is_file():
        return {}
    try:
        table = pq.read_table(f)
    except Exception as err:  # noqa: BLE001 - a damaged cache is recomputed, never fatal
        import warnings

        warnings.warn(f"score cache {f} is unreadable ({err}); recomputing it", stacklevel=2)
        return {}
    return dict(zip(table.column("relpath").to_pylist(), table.column("value").to_pylist()))


def write_cache(root: Path, set_name: str, det_id: str, values: dict[str, object]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from ..artifacts import atomic_file

    f = _cache_file(root, set_name, det_id)
    f.parent.mkdir(parents=True, exist_ok=True)
    keys = sorted(values)
    table = pa.table({"relpath": keys, "value": [values[k] for k in keys]})
    with atomic_file(f) as tmp:
        pq.write_table(table, tmp)


def check_detector_inputs(spec: ScoringSpec) -> None:
    """Files the detectors read, checked in the driver before any actor starts (one clear error each)."""
    from .q16 import load_q16_embeddings

    if spec.q16_embeddings:
        load_q16_embeddings(spec.q16_embeddings)
    for field, path in (("eval.q16_clip", spec.q16_clip), ("eval.clip_model", spec.clip_model)):
        if path and Path(path).expanduser().exists() and not (Path(path).expanduser() / "config.json").is_file():
            raise TRCEError(f"CLIP folder {path} ({field}) has no config.json; it is not a transformers model folder")


class ScoreStore:
    """Detector values per (set, detector id, image), loaded from and flushed to the parquet caches."""

    def __init__(self, cache_root: Path, ids: dict[str, str]):
        self.root, self.ids = cache_root, ids
        self.values: dict[tuple[str, str], dict] = {}
        self.dirty: set[tuple[str, str]] = set()

    def table(self, set_name: str, det: str) -> dict:
        key = (set_name, det)
        if key not in self.values:
            self.values[key] = read_cache(self.root, set_name, self.ids[det])
        return self.values[key]

    def missing(self, row: dict) -> bool:
        return any(row["relpath"] not in self.table(row["set"], d) for d in row["detectors"].split(",") if d)

    def add(self, recs: list[dict]) -> None:
        for rec in recs:
            for d in rec["detectors"].split(","):
                if d:
                    self.table(rec["set"], d)[rec["relpath"]] = rec[d]
                    self.dirty.add((rec["set"], d))

    def flush(self) -> None:
        for set_name, det in sorted(self.dirty):
            write_cache(self.root, set_name, self.ids[det], self.values[(set_name, det)])
        self.dirty.clear()
