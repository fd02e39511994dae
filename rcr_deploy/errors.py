"""Typed errors, one class per cause. The CLI's main() maps each to one line on stderr and an exit code:

- `RcrError` and its subclasses: bad input (a wrong file, shape or option), exit 2. The message
  names the file or option and the fix.
- `VerificationError`: a check failed (two stages disagree, an engine is not accurate), exit 1.
- `InternalError`: rcr-deploy's own defect (BN left in the graph, a wrong conv count, a TensorRT
  build failure on our artifact), exit 1, with "this is a bug" and the --debug hint.
"""

from __future__ import annotations

import sys
from typing import Any


class RcrError(Exception):
    """Bad input: a wrong file, shape or option. Its message names the file and the fix."""

    exit_code = 2


class CheckpointError(RcrError):
    """A checkpoint that cannot be loaded as asked."""


class DataError(RcrError):
    """A dataset, image or mask that cannot be used."""


class ManifestError(RcrError):
    """An artifact's manifest that is missing, corrupt, empty, of the wrong shape or another artifact's."""


class BackendUnavailable(RcrError):
    """A backend (TensorRT, CUDA, onnxruntime provider) that this machine does not have."""


def require(module: str, what: str, extra: str) -> Any:
    """`module`, imported, or `BackendUnavailable` saying that `what` is missing and which extra installs it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise BackendUnavailable(f"{what} is not installed; pip install 'rcr-deploy[{extra}]'") from None


class VerificationError(Exception):
    """Two stages disagree beyond tolerance. Exit code 1: the model, not the input, is wrong."""

    exit_code = 1


class InternalError(Exception):
    """rcr-deploy's own defect: its output fails a structural check it should always pass. Exit code 1."""

    exit_code = 1
    hint = "this is a bug in rcr-deploy; rerun with --debug and report the traceback"


class ExportError(InternalError):
    """An export step whose output fails a structural check (BN left in, wrong conv count, Q/DQ
    layout, TensorRT parser or builder failure on our artifact)."""


def one_line(e: BaseException) -> str:
    """The error's message; for one re-raised from a DataLoader worker, whose message carries the
    worker's whole traceback, only the original message (its last line, naming the file)."""
    text = str(e)
    if "\nOriginal Traceback" in text:
        text = text.rstrip().splitlines()[-1].split(": ", 1)[-1]
    return text


#: The typed errors a command maps to one line and an exit code (`report`); anything else is a traceback.
TYPED = (RcrError, VerificationError, InternalError)


def report(e: RcrError | VerificationError | InternalError) -> int:
    """THE error-to-exit mapping: one line on stderr (with the bug hint for our own defects) and
    the exit code of its class. `cli.main` and the benchmark scripts' entry points call it."""
    hint = f"; {e.hint}" if isinstance(e, InternalError) else ""
    print(f"error: {one_line(e)}{hint}", file=sys.stderr)
    return e.exit_code
