"""The user-facing error classes: problems a user can fix, reported by ``run_cli`` as one line.

Every class derives from :class:`UserError`; ``utils.cli.run_cli`` catches that base (and the
built-in file errors), so a new module only subclasses it. Each class also derives from the
built-in exception it has always been (``ValueError``, ``RuntimeError``, ``KeyError``) so that
callers catching those keep working. This module imports nothing: every layer may use it.
"""

from __future__ import annotations

__all__ = [
    "CheckpointError",
    "ConfigError",
    "DatasetError",
    "RecordIOError",
    "RecordKeyError",
    "UnknownNameError",
    "UnsafeCheckpointError",
    "UsageError",
    "UserError",
]


class UserError(Exception):
    """A problem with the user's input (a file, flag, config key or value); the message names it."""


class UsageError(UserError, ValueError):
    """A command-line value that cannot work (the message names the flag and the value)."""


class ConfigError(UserError, ValueError):
    """A configuration file, key or value is wrong; the message says which."""


class UnknownNameError(UserError, ValueError):
    """A name looked up in a registry (backbone, head, method, ...) that is not registered."""


class RecordIOError(UserError, ValueError):
    """A .rec/.idx file is corrupt, truncated, or inconsistent with its index."""


class RecordKeyError(RecordIOError, KeyError):
    """A key that the .idx file does not hold."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class DatasetError(UserError, ValueError):
    """A training or evaluation data set whose content cannot be used (labels, sizes, ...)."""


class CheckpointError(UserError, RuntimeError):
    """A checkpoint that cannot be read or does not fit the network it is loaded into."""


class UnsafeCheckpointError(CheckpointError):
    """A checkpoint that would need arbitrary code to unpickle (refused: weights_only=True)."""
