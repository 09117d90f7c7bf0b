"""Errors a user can cause, each with its own exit code.

Exit codes are API: scripts and CI branch on them, so every code here is documented in
README.md and tested. Anything raised as an `IgcliError` reaches the user as one line.
"""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    OK = 0
    INTERNAL = 1  # a bug in igcli: please report it
    USAGE = 2  # bad options or arguments (click's own code)
    MODEL = 3  # the model is missing, unreadable, not ONNX, or unusable
    INPUTS_FAILED = 4  # at least one input could not be explained
    COMPLETENESS = 5  # the completeness gate (--max-completeness-error) failed
    OUTPUT = 6  # the output folder cannot be written
    GRADIENTS = 7  # no gradient graph when one was required, or gradcheck out of tolerance
    SHARDS = 8  # merge-reports --expect N: a shard is missing, duplicated or of another run
    INTERRUPTED = 130  # Ctrl-C
    PIPE_CLOSED = 141  # stdout's reader went away (`| head`): 128 + SIGPIPE, as tools do


class IgcliError(Exception):
    """An error with a one-line message meant for the user."""

    exit_code: ExitCode = ExitCode.INTERNAL

    def __init__(self, message: str, path: object | None = None) -> None:
        self.path = path
        self.reason = message  # without the path, to re-attribute the error to another file
        super().__init__(f"{path}: {message}" if path is not None else message)


class UsageError(IgcliError):
    exit_code = ExitCode.USAGE


class ModelError(IgcliError):
    exit_code = ExitCode.MODEL


class InputError(IgcliError):
    """One input cannot be explained; a batch run goes on with the others."""

    exit_code = ExitCode.INPUTS_FAILED


class NonFiniteGradient(InputError):
    """The gradient graph gives NaN or Inf where F is finite: 0 times an infinite slope
    (sqrt at 0, a softmax over fully masked scores cleaned up after it), where finite
    differences of F are fine. The self-check then takes them (see Session._self_check);
    adaptive steps take it at a path's end as the integrable singularity it is there (see
    ig._Adaptive)."""


class OutputError(IgcliError):
    exit_code = ExitCode.OUTPUT


class GradientError(IgcliError):
    exit_code = ExitCode.GRADIENTS


class ShardError(IgcliError):
    """Shard reports that do not add up to one whole run (merge-reports --expect)."""

    exit_code = ExitCode.SHARDS


class UnsupportedOpsError(GradientError):
    """The model has ops for which no gradient rule exists."""

    def __init__(self, ops: list[str], path: object | None = None) -> None:
        self.ops = sorted(set(ops))
        super().__init__("no gradient rule for " + ", ".join(self.ops), path)


class IgcliWarning(UserWarning):
    """What a Session says of a model or an input that still gets an answer (see
    Session's `warn`)."""
