"""Keep terminals and Ray worker logs for our own progress bars and errors."""

import os


def quiet_libraries() -> None:
    """No per-component loading bars or import notices from transformers/diffusers (in this process)."""
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    diffusers_logging.disable_progress_bar()
    transformers_logging.disable_progress_bar()
