"""Typed errors. The CLI turns any `RcrError` into one line on stderr and exit code 2."""

from __future__ import annotations


class RcrError(Exception):
    """Bad input: a wrong file, shape or option. Its message names the file and the fix."""

    exit_code = 2


class CheckpointError(RcrError):
    """A checkpoint that cannot be loaded as asked."""


class DataError(RcrError):
    """A dataset, image or mask that cannot be used."""


class ExportError(RcrError):
    """An export step whose output fails a structural or numerical check."""


class BackendUnavailable(RcrError):
    """A backend (TensorRT, CUDA, onnxruntime provider) that this machine does not have."""


class VerificationError(Exception):
    """Two stages disagree beyond tolerance. Exit code 1: the model, not the input, is wrong."""

    exit_code = 1
