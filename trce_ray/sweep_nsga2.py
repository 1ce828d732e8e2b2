"""NSGA-II for a multi-objective optuna sweep, picklable: Ray Tune pickles its searcher into the experiment state
(with the standard pickle, so by reference: this class lives at module level), and optuna 5.1's NSGAIISampler holds
a thread lock that cannot be pickled. Imported only when a sweep uses optuna with several objectives."""

from __future__ import annotations

import threading

import optuna


class NSGAIISampler(optuna.samplers.NSGAIISampler):
    def __getstate__(self):
        return {k: v for k, v in self.__dict__.items() if k != "_thread_lock"}

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._thread_lock = threading.Lock()
