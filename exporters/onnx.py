"""torch -> ONNX: export, simplify, structural checks, and validation through the Runner interface.

Export config is data (Optimum's idea): one input `input` (N x C x H x W float32, batch dynamic),
one output `logits` (N x 2 x H x W float32). Anything else in the graph is an error.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import io
import logging
import os
import sys
import warnings
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import onnx
import torch
from torch import nn

from rcr_deploy.errors import ExportError, RcrError, VerificationError
from rcr_deploy.fileio import atomic_path
from rcr_deploy.reparam import CheckResult, Tolerance, compare
from rcr_deploy.runtime import Runner, int8_saturates

INPUT_NAME = "input"
OUTPUT_NAME = "logits"
DEFAULT_OPSET = 18
#: Largest batch the exported graph promises (the dynamic axis needs a bound for torch.export).
MAX_BATCH = 1024
#: Dynamic H/W are multiples of 32 (five stride-2 stages), up to 32 * this.
MAX_SIDE_32 = 128


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """The dynamo exporter prints progress lines and deprecation warnings; keep the CLI's output ours."""
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        level = logging.getLogger("torch").level
        logging.getLogger("torch").setLevel(logging.ERROR)
        try:
            yield
        finally:
            logging.getLogger("torch").setLevel(level)


def to_proto(
    model: nn.Module,
    size: tuple[int, int] = (224, 224),
    dynamic_hw: bool = False,
    opset: int = DEFAULT_OPSET,
    in_channels: int | None = None,
) -> onnx.ModelProto:
    """Export `model` (eval mode is forced: a model left in train mode would export silently wrong)
    with the current torch exporter (dynamo), a dynamic batch axis and optionally dynamic H/W."""
    if opset < 18:
        raise RcrError(f"opset {opset} is too old for the torch exporter; use --opset 18 or newer")
    if size[0] % 32 or size[1] % 32:
        raise RcrError(f"input size {size[0]}x{size[1]} is not a multiple of 32; pass --size 224 or another multiple")
    model = model.eval()
    channels = in_channels or getattr(model, "in_channels", 4)
    x = torch.zeros(2, channels, *size)
    dims: dict[int, object] = {0: torch.export.Dim("batch", min=1, max=MAX_BATCH)}
    if dynamic_hw:
        dims[2] = 32 * torch.export.Dim("height_32", min=1, max=MAX_SIDE_32)
        dims[3] = 32 * torch.export.Dim("width_32", min=1, max=MAX_SIDE_32)
    try:
        with _quiet(), torch.no_grad():
            program = torch.onnx.export(
                model,
                (x,),
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                dynamic_shapes=(dims,),
                opset_version=opset,
                dynamo=True,
                verbose=False,
            )
    except Exception as e:  # the exporter raises many types; one line is what the user needs
        raise ExportError(f"torch.onnx.export failed: {str(e).splitlines()[0]}; rerun with --debug for details") from e
    return program.model_proto


def save_proto(proto: onnx.ModelProto, path: str | os.PathLike) -> Path:
    """Write an ONNX model atomically (temp file + rename)."""
    with atomic_path(path) as tmp:
        onnx.save_model(proto, str(tmp))
    return Path(path)


def export_onnx(
    model: nn.Module,
    path: str | os.PathLike,
    size: tuple[int, int] = (224, 224),
    dynamic_hw: bool = False,
    opset: int = DEFAULT_OPSET,
    simplify_graph: bool = True,
) -> Path:
    """Plain torch -> ONNX file for any model (train or deploy form), simplified unless told not to."""
    proto = to_proto(model, size, dynamic_hw, opset)
    return save_proto(simplify(proto) if simplify_graph else proto, path)


def simplify(proto: onnx.ModelProto) -> onnx.ModelProto:
    """onnxsim: fold constants and drop no-op nodes; its own check must pass."""
    import onnxsim

    try:
        simplified, ok = onnxsim.simplify(proto)
    except Exception as e:
        raise ExportError(f"onnxsim failed: {str(e).splitlines()[0]}; export with --no-simplify") from e
    if not ok:
        raise ExportError("onnxsim could not validate the simplified model; export with --no-simplify")
    return simplified


def op_counts(proto: onnx.ModelProto) -> dict[str, int]:
    return dict(collections.Counter(node.op_type for node in proto.graph.node))


def _io(values: Iterable[onnx.ValueInfoProto]) -> list[tuple[str, int]]:
    return [(v.name, v.type.tensor_type.elem_type) for v in values]


def check_structure(proto: onnx.ModelProto, deploy: nn.Module) -> dict[str, int]:
    """The graph is the deploy model and nothing else; raises `ExportError` otherwise.

    No BatchNormalization, as many Conv / ConvTranspose nodes as the deploy model has conv
    modules, and exactly the documented float32 input and output (no training-only heads).
    Returns the op counts."""
    try:
        onnx.checker.check_model(proto)
    except onnx.checker.ValidationError as e:
        raise ExportError(f"exported graph is not valid ONNX: {str(e).splitlines()[0]}") from e
    ops = op_counts(proto)
    if ops.get("BatchNormalization"):
        raise ExportError(f"exported graph has {ops['BatchNormalization']} BatchNormalization nodes; the model was not re-parameterised")
    expected = {
        "Conv": sum(isinstance(m, nn.Conv2d) for m in deploy.modules()),
        "ConvTranspose": sum(isinstance(m, nn.ConvTranspose2d) for m in deploy.modules()),
    }
    for op, n in expected.items():
        if ops.get(op, 0) != n:
            raise ExportError(f"exported graph has {ops.get(op, 0)} {op} nodes, the deploy model has {n}")
    float32 = onnx.TensorProto.FLOAT
    if _io(proto.graph.input) != [(INPUT_NAME, float32)] or _io(proto.graph.output) != [(OUTPUT_NAME, float32)]:
        raise ExportError(
            f"exported graph has inputs {[v.name for v in proto.graph.input]} and outputs "
            f"{[v.name for v in proto.graph.output]}; expected float32 [{INPUT_NAME!r}] -> [{OUTPUT_NAME!r}] only"
        )
    return ops


#: Each stage against the one before it: pass when max|a-b| <= atol + rtol * max|reference|,
#: and (on real images) when at least `agreement` of the pixels get the same class.
#: fp32 is ONNX Runtime vs the deploy-form torch model; fp16 and int8 are vs the fp32 artifact.
#: Measured on a partly trained RCRNet at 224 (docs/export.md): fp16 max rel 1.1e-2, agreement 99.99 %;
#: int8 max rel 0.41, agreement 98.1 %. INT8 logits move a lot where the mask barely does, so its
#: logit bound only catches a broken graph and the pixel agreement is the real gate.
TOLERANCES: dict[str, tuple[Tolerance, float]] = {
    "fp32": (Tolerance(rtol=1e-4, atol=1e-5), 0.999),
    "fp16": (Tolerance(rtol=3e-2, atol=1e-3), 0.995),
    "int8": (Tolerance(rtol=1.0, atol=0.1), 0.95),
}


@dataclasses.dataclass
class Validation:
    """One stage compared with the stage before it, on random and real inputs."""

    stage: str
    reference: str
    checks: list[CheckResult]
    #: Fraction of pixels whose argmax class agrees with the reference (real inputs only).
    mask_agreement: float | None = None
    min_mask_agreement: float = 0.0
    #: Measured on a CPU whose INT8 kernels saturate: agreement not gated (`validate_openvino_int8`).
    cpu_saturates: bool = False

    @property
    def passed(self) -> bool:
        agreement_ok = self.mask_agreement is None or self.mask_agreement >= self.min_mask_agreement
        return all(self.checks) and agreement_ok

    def __bool__(self) -> bool:
        return self.passed

    def summary(self) -> dict:
        worst = max(self.checks, key=lambda r: r.ratio)
        return {
            "stage": self.stage,
            "reference": self.reference,
            "passed": self.passed,
            "max_abs": max(r.max_abs for r in self.checks),
            "max_rel": max(r.max_rel for r in self.checks),
            "worst": {"input": worst.name, "index": worst.worst_index},
            "rtol": worst.rtol,
            "atol": worst.atol,
            "mask_agreement": self.mask_agreement,
            "min_mask_agreement": self.min_mask_agreement,
            "inputs": [r.name for r in self.checks],
            **({"cpu_saturates": True} if self.cpu_saturates else {}),
        }


def validate_openvino_int8(runner: Runner, reference: Runner, inputs: dict[str, np.ndarray], tol: Tolerance, agreement: float) -> Validation:
    """`validate` for OpenVINO running an INT8 model. On a CPU whose 8-bit dot products saturate
    (`int8_saturates`: x86 without VNNI), OpenVINO clips sums that ONNX Runtime, asked for exact
    kernels, does not, and it has no switch for it (its docs call it the saturation issue). There
    the logit bound, which catches a broken graph, still gates; the pixel agreement is measured,
    recorded (`cpu_saturates`) and warned about below `agreement`, but not gated: an untrained
    RCRNet, whose two logits are almost equal everywhere, flips pixels freely there while the
    trained model barely moves (measured in docs/cpu-engines.md, "CPUs without VNNI")."""
    saturates = int8_saturates()
    result = validate(runner, reference, inputs, tol, 0.0 if saturates else agreement)
    result.cpu_saturates = saturates
    if result and result.mask_agreement is not None and result.mask_agreement < agreement:
        print(
            f"warning: {runner.name}: OpenVINO's INT8 kernels saturate on this CPU (x86 without VNNI): it agrees with "
            f"{reference.name} on {result.mask_agreement:.1%} of pixels, where {agreement:.0%} is asked elsewhere; "
            "verify OpenVINO INT8 on a CPU with VNNI (docs/cpu-engines.md)",
            file=sys.stderr,
        )  # fmt: skip
    return result


def validation_inputs(
    in_channels: int, size: tuple[int, int], real: np.ndarray | None = None, seed: int = 0
) -> dict[str, np.ndarray]:
    """Named NCHW float32 inputs: random at batch 1 and 2 (the batch axis is dynamic), and real images."""
    rng = np.random.default_rng(seed)
    inputs = {
        f"random b{b} {size[0]}x{size[1]}": rng.standard_normal((b, in_channels, *size)).astype(np.float32)
        for b in (1, 2)
    }
    if real is not None and len(real):
        inputs[f"real images b{len(real)}"] = real
    return inputs


def validate(
    runner: Runner,
    reference: Runner,
    inputs: dict[str, np.ndarray],
    tol: Tolerance,
    min_mask_agreement: float = 0.0,
) -> Validation:
    """Compare `runner` with `reference` on every input; mask agreement is measured on real ones."""
    checks, agree, total = [], 0, 0
    for name, x in inputs.items():
        out, ref = runner.infer(x), reference.infer(x)
        if out.shape != ref.shape:
            raise ExportError(f"{runner.name}: output shape {out.shape} on {name}, {reference.name} gives {ref.shape}")
        checks.append(compare(name, torch.from_numpy(out), torch.from_numpy(ref), tol))
        if name.startswith("real"):
            agree += int((out.argmax(1) == ref.argmax(1)).sum())
            total += out.shape[0] * out.shape[2] * out.shape[3]
    return Validation(
        stage=runner.name,
        reference=reference.name,
        checks=checks,
        mask_agreement=agree / total if total else None,
        min_mask_agreement=min_mask_agreement,
    )


def validated(runner: Runner, reference: Runner, inputs: dict[str, np.ndarray], bound: tuple[Tolerance, float], stage: str) -> Validation:
    """`validate` for another format's file against an ONNX artifact, as stage `stage`, within
    `bound` (tolerance, minimum mask agreement); `VerificationError` (exit 1) beyond it."""
    tol, agreement = bound
    result = validate(runner, reference, inputs, tol, agreement)
    result.stage = stage
    if not result:
        s = result.summary()
        name, ref = (Path(getattr(r, "path", r.name)).name for r in (runner, reference))
        raise VerificationError(
            f"{name} differs from {ref} on ONNX Runtime beyond tolerance: max abs {s['max_abs']:.3e} "
            f"(rtol {tol.rtol}, atol {tol.atol}) on {s['worst']['input']}, mask agreement {s['mask_agreement']} (needs {agreement})"
        )
    return result
