"""Plug-ins: packages that add model aliases and evaluation suites to the core without the core importing them.

A plug-in is a function named by an entry point in the `trce_ray.plugins` group, e.g. in its pyproject.toml:

    [project.entry-points."trce_ray.plugins"]
    toy = "trce_ray.toy.plugin:register"

It is called once per process, the first time the core looks a registered name up, and registers what it adds with
`trce_ray.models.loading.register_model_alias` and `trce_ray.evaluation.registry.register_suite`. Ray workers load
plug-ins the same way (by entry point), so nothing has to travel with a task.
"""

from __future__ import annotations

from importlib.metadata import entry_points

GROUP = "trce_ray.plugins"
_loaded = False


def load_plugins() -> None:
    """Run every installed plug-in's registration function, once per process."""
    global _loaded
    if _loaded:
        return
    _loaded = True  # before the calls: a plug-in that looks a name up while registering must not recurse
    for ep in sorted(entry_points(group=GROUP), key=lambda e: e.name):
        ep.load()()
