"""Errors the toolkit raises on purpose, each with the exit code the CLI returns for it.

Exit codes (documented in the README):
  0  success, gates passed
  2  bad input or usage (a file, a flag, a folder the user gave us)
  3  a gate failed (the build finished, the optimized model is not good enough)
  4  internal error (a bug, or a backend that failed in a way we did not foresee)
  5  a required optional package is missing
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_BAD_INPUT = 2
EXIT_GATE_FAILED = 3
EXIT_INTERNAL = 4
EXIT_MISSING_DEPENDENCY = 5


class DeployError(Exception):
    """Base class: a failure we can explain. The message says what and what to do."""

    exit_code = EXIT_INTERNAL


class BadInputError(DeployError):
    """The user gave us something we cannot use (path, flag, checkpoint, folder)."""

    exit_code = EXIT_BAD_INPUT


class ModelCheckError(BadInputError):
    """The model's architecture is broken (e.g. a residual add of mismatched shapes)."""


class CheckIncompleteError(BadInputError):
    """The architecture check could not look at all of the model (nothing wrong found in what it saw)."""


class ArtifactIntegrityError(BadInputError):
    """An artifact's files differ from the sha256 its manifest recorded (damaged, edited or swapped)."""


class MissingDependencyError(DeployError):
    """An optional package is needed for this step and is not installed."""

    exit_code = EXIT_MISSING_DEPENDENCY


class InternalError(DeployError):
    """Something inside the toolkit or a backend went wrong unexpectedly."""

    exit_code = EXIT_INTERNAL
