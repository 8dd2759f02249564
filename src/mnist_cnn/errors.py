"""Errors a user can cause or meet. The CLI turns each into one line on stderr and an exit code.

Anything else that escapes is a bug in mnist-cnn and is shown as such.
"""
from __future__ import annotations


class MnistCnnError(Exception):
    """A failure to report as one line, without a traceback. Exit code 1 (runtime)."""

    exit_code = 1


class UsageError(MnistCnnError):
    """The user asked for something invalid (bad flag value, unknown name, clashing run). Exit 2."""

    exit_code = 2


class DataError(MnistCnnError):
    """A data set could not be obtained or failed verification."""


class CheckpointError(MnistCnnError):
    """A checkpoint or run directory is missing, truncated, or from an incompatible model/format."""
