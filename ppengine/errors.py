"""Errors the engine raises on purpose, each with a message meant for the user."""


class PPError(Exception):
    """Base class: an error whose message says what was wrong and what to do."""


class ConfigError(PPError, ValueError):
    """A config file or override is wrong (unknown key, type or value)."""


class CheckpointError(PPError):
    """A checkpoint is missing, truncated or does not match the model."""


class TrainingDiverged(PPError, FloatingPointError):
    """The loss became NaN/Inf; the last good checkpoint is kept."""


class InputError(PPError, ValueError):
    """A user-given file (image, mesh, weights) could not be used."""


class ExportError(PPError):
    """A model (component) could not be exported or its exported file failed its check."""
