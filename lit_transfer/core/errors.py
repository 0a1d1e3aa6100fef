"""Errors the command line reports as one line (exit 2) instead of a traceback."""

from __future__ import annotations


class ConfigError(Exception):
    """A configuration that cannot be instantiated; reported without a traceback, before any training."""


class CheckpointMismatchError(ValueError):
    """A checkpoint that does not belong to this data (other classes); the CLI reports it as a configuration error."""
