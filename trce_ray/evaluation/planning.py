"""What an evaluation will do before any actor starts: detectors per set, image rows, the FID reference model."""

from __future__ import annotations

from pathlib import Path

from ..errors import TRCEError
from .generation import image_relpath
from .prompts import PromptSet

WANTED = {  # detectors each kind of set asks for, in order of importance
    "nudity": ["nudenet"],
    "i2p": ["q16", "nudenet"],
    "coco": ["fid", "clip"],
    "artist": ["style"],
    "celebrity": ["face"],
}  # plus the kinds plug-in suites register (evaluation.registry)


def wanted_detectors(kind: str) -> list[str]:
    from .registry import suite_of_kind

    if kind in WANTED:
        return WANTED[kind]
    return list(suite_of_kind(kind).kinds[kind])


def q16_embeddings_path(ecfg) -> str | None:
    if ecfg.q16_embeddings:
        return ecfg.q16_embeddings
    if ecfg.data_dir:
        return str(Path(ecfg.data_dir).expanduser() / "q16" / "q16_prompts_ViT-L-14.json")
    return None


def available_detectors(ecfg) -> dict[str, str | None]:
    """Detector -> None when usable, else why not (a setting to give)."""
    fid_ok = None
    if ecfg.fid_features == "inception":
        try:
            import torch_fidelity  # noqa: F401
        except ImportError:
            fid_ok = "FID needs torch-fidelity for eval.fid_features=inception, or a TorchScript feature network"
    from .registry import plugin_detectors

    plugins = {}
    for det in plugin_detectors():
        why = det.missing()
        plugins.update({c: why for c in det.columns})
    return {
        **plugins,
        "nudenet": None,
        "q16": None if ecfg.q16_clip and q16_embeddings_path(ecfg) else "Q16 needs eval.q16_clip (CLIP ViT-L/14)",
        "clip": None if ecfg.clip_model else "CLIP score needs eval.clip_model (CLIP ViT-B/32)",
        "fid": fid_ok,
        "face": None if ecfg.face_classifier else "celebrity accuracy needs eval.face_classifier",
        "style": None if ecfg.style_classifier else "style accuracy needs eval.style_classifier",
    }


def plan_detectors(psets: list[tuple[PromptSet, bool]], ecfg) -> tuple[dict[str, list[str]], list[str]]:
    """Detectors per set, and notices about what cannot be measured; a set nothing can score is dropped
    (an error when the user named it explicitly rather than through a suite)."""
    avail = available_detectors(ecfg)
    plan, notices = {}, []
    for ps, explicit in psets:
        wanted = wanted_detectors(ps.kind)
        usable = [d for d in wanted if avail[d] is None]
        for d in wanted:
            if avail[d] is not None:
                notices.append(f"{ps.name}: {avail[d]}")
        if not usable:
            if explicit:
                raise TRCEError(f"set '{ps.name}' cannot be scored: {avail[wanted[0]]}")
            notices.append(f"{ps.name}: skipped (nothing configured can score it)")
            continue
        plan[ps.name] = usable
    return plan, notices


def image_rows(ps: PromptSet, detectors: list[str], images_per_prompt: int) -> list[dict]:
    rows = []
    for r in ps.rows:
        for k in range(images_per_prompt):
            rows.append(
                {
                    "set": r.set,
                    "row": r.row,
                    "k": k,
                    "prompt": r.prompt,
                    "seed": r.seed,
                    "guidance": r.guidance,
                    "relpath": image_relpath(r.set, r.row, k, r.prompt, r.seed, r.guidance),
                    "detectors": ",".join(detectors),
                }
            )
    return rows


def reference_model(cfg) -> str | None:
    """The original model FID_gen compares with: eval.reference_model, else the erase folder's base model."""
    from ..models.erased import erase_output_parts, is_erase_output

    if cfg.eval.reference_model:
        return cfg.eval.reference_model
    if is_erase_output(cfg.model.path):
        return erase_output_parts(cfg.model.path)[0]
    return cfg.model.path if cfg.eval.deltas else None
