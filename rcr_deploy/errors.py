"""Typed errors, one class per cause. The CLI's main() maps each to one line on stderr and an exit code:

- `RcrError` and its subclasses: bad input (a wrong file, shape or option), exit 2. The message
  names the file or option and the fix.
- `VerificationError`: a check failed (two stages disagree, an engine is not accurate), exit 1.
- `InternalError`: rcr-deploy's own defect (BN left in the graph, a wrong conv count, a TensorRT
  build failure on our artifact), exit 1, with "this is a bug" and the --debug hint.
"""

from __future__ import annotations


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
