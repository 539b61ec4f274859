"""Errors the toolkit raises on purpose, each with the exit code the CLI returns for it.

Exit codes (documented in the README):
  0  success, gates passed
  2  bad input or usage (a file, a flag, a folder the user gave us)
  3  a gate failed (the build finished, the optimized model is not good enough)
  4  internal error (a bug, or a backend that failed in a way we did not foresee)
  5  a required optional package is missing
  6  the machine ran out of a resource: disk full, quota exceeded, read-only file system
  7  pending on device: every check that could run here passed, the TensorRT engines were not built
     (no TensorRT on this machine); CI can tell it from a failure
130  interrupted by SIGINT (Ctrl-C); 143 terminated by SIGTERM: staging removed, the previous build untouched
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_BAD_INPUT = 2
EXIT_GATE_FAILED = 3
EXIT_INTERNAL = 4
EXIT_MISSING_DEPENDENCY = 5
EXIT_RESOURCE = 6
EXIT_PENDING_ON_DEVICE = 7
EXIT_INTERRUPTED = 130
EXIT_TERMINATED = 143


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


class ResourceError(DeployError):
    """The operating system ran out of something: ENOSPC, EDQUOT, EROFS. Names the path and what was needed."""

    exit_code = EXIT_RESOURCE


class InternalError(DeployError):
    """Something inside the toolkit or a backend went wrong unexpectedly."""

    exit_code = EXIT_INTERNAL


class Terminated(BaseException):
    """SIGTERM arrived (CI cancelled the job): raised in the main thread by the CLI's handler so that every
    ``with atomic_dir`` unwinds and removes its staging. A BaseException, like KeyboardInterrupt, so that an
    ``except Exception`` on the way does not swallow it. Exit code 143."""

    exit_code = EXIT_TERMINATED
