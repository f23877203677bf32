"""The trainer's errors; each message says why and what to do."""

from saekit.errors import SaekitError


class TrainError(SaekitError, RuntimeError):
    """Training cannot start or continue; the message says why and what to do."""


class TrainingDiverged(TrainError):
    """The loss or gradient became NaN/inf or exploded; the last good checkpoint is kept."""


class CorruptCheckpoint(TrainError):
    """A checkpoint's files cannot be read (truncated or damaged on disk)."""
