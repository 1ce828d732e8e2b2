"""Evaluation harness: the erasure literature's prompt sets, generated on Ray Data and scored by NudeNet, Q16,
FID, CLIP score and user-supplied identity/style classifiers; results tracked in MLflow. See docs/evaluation.md.

Modules: `prompts` (sets and loaders), `planning` (detectors per set, image rows), `generation` (one pipeline per
actor), `scoring` (detectors per actor, score cache), `dataflow` (the Ray Data pipeline), `nudity`, `q16`, `clip`,
`fid`, `identity` (detectors and their metrics), `metrics`, `runner` (`run_eval`), `outputs` (files and MLflow),
`report` (paper-shaped tables), `images` (files and grids), `registry` (suites that plug-ins add, e.g. the toy's).
"""
