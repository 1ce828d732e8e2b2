"""User-facing errors: one clear sentence, no traceback needed to understand them."""


class TRCEError(Exception):
    """An input problem the user can fix; the CLI prints it as one line and exits with status 2."""


class ConfigError(TRCEError):
    """A configuration value is unknown, mistyped or out of range."""


class TRCEWarning(UserWarning):
    """Something the user should know although the command goes on (truncated prompts, a destroyed model)."""
