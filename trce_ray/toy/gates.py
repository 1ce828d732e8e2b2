"""The shipped toy model's quality gates: is the world good enough for erasure results to mean something?"""

from __future__ import annotations

CLASSIFIER_GATE = 0.98  # colour and shape both right on fresh renders
DIRECT_GATE = 0.90  # the original model draws the asked colour for direct prompts
PARAPHRASE_GATE = 0.80  # ... and for held-out paraphrases


def measure_gates(
    n_per_colour: int = 16,
    steps: int = 20,
    guidance: float = 5.0,
    seed: int = 0,
    progress: bool = False,
    family: str = "sd",
    pipeline: str | None = None,
) -> dict:
    """Measure the three gates on the shipped weights of `family` (sd or flux; both are read by the shipped
    classifier), or on the pipeline folder `pipeline`; `lines` is a printable summary."""
    from ..models import load_pipeline
    from .assets import load_toy_classifier, load_toy_pipeline
    from .bench import classifier_accuracy, fidelity

    pipe = load_pipeline(pipeline) if pipeline else load_toy_pipeline(family=family)
    classifier = load_toy_classifier()
    acc = classifier_accuracy(classifier)
    fid = fidelity(pipe, classifier, n_per_colour, steps, guidance, seed, progress=progress)
    checks = [
        ("classifier accuracy on fresh renders (colour and shape)", acc["both"], CLASSIFIER_GATE),
        ("original model draws the asked colour, direct prompts", fid["direct"], DIRECT_GATE),
        ("original model draws the asked colour, held-out paraphrases", fid["paraphrase"], PARAPHRASE_GATE),
    ]
    lines = [f"{'PASS' if v >= g else 'FAIL'}  {name}: {100 * v:.1f}% (gate {100 * g:.0f}%)" for name, v, g in checks]
    for name in ("direct", "paraphrase"):
        per = fid[f"{name}_per_colour"]
        lines.append(f"per colour, {name}: " + ", ".join(f"{c} {100 * v:.0f}%" for c, v in per.items()))
    return {
        "classifier": acc,
        "fidelity": fid,
        "passed": all(v >= g for _, v, g in checks),
        "lines": lines,
        "settings": {
            "family": family,
            "pipeline": pipeline,
            "n_per_colour": n_per_colour,
            "steps": steps,
            "guidance": guidance,
            "seed": seed,
        },
    }
