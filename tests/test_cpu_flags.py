"""What the CPU's flags decide. On x86 without VNNI, 8-bit dot products saturate: ONNX Runtime is
asked for its exact INT8 kernels there, and OpenVINO's pixel agreement is recorded, not gated.
Without avx512_bf16 or amx_bf16, bf16 training is emulated and warned about. The export tests run
the real thing on whatever CPU they find; these pin the logic for every CPU."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

import rcr_deploy.runtime as runtime
from rcr_deploy.exporters import onnx as onnx_export
from rcr_deploy.reparam import Tolerance
from rcr_deploy.runtime import Runner
from rcr_deploy.runtime import onnxruntime_runner
from support import train_config


@pytest.fixture
def cpu(monkeypatch, tmp_path):
    """Set the machine and its /proc/cpuinfo flags: `cpu("x86_64", "avx2 fma")` (None: no file)."""

    def set_cpu(machine: str, flags: str | None) -> bool:
        monkeypatch.setattr(runtime.platform, "machine", lambda: machine)
        info = tmp_path / "cpuinfo"
        info.unlink(missing_ok=True)
        if flags is not None:
            info.write_text(f"processor\t: 0\nflags\t\t: fpu sse sse2 {flags}\n")
        monkeypatch.setattr(runtime, "CPUINFO", info)
        runtime.cpu_flags.cache_clear()
        return runtime.int8_saturates()

    yield set_cpu
    runtime.cpu_flags.cache_clear()


def test_int8_saturates_on_x86_without_vnni_only(cpu):
    assert cpu("x86_64", "avx avx2 fma avx512f avx512bw")  # AVX-512 without VNNI: pmaddubsw
    assert cpu("x86_64", "sse4_1 avx")
    assert not cpu("x86_64", "avx2 avx512f avx512_vnni")
    assert not cpu("x86_64", "avx2 avx_vnni")  # Alder Lake and later: VEX-encoded VNNI
    assert not cpu("aarch64", "fp asimd")  # ARM's dot products widen to 32 bits
    assert cpu("x86_64", None)  # flags unreadable: assume it can, the exact kernels are always right


def _tiny_onnx(path) -> None:
    """A 1x1 Conv from 4 channels to 2: an RCRNet-shaped graph ONNX Runtime can load."""
    w = helper.make_tensor("w", TensorProto.FLOAT, [2, 4, 1, 1], np.ones(8, np.float32))
    graph = helper.make_graph(
        [helper.make_node("Conv", ["input", "w"], ["output"])], "tiny",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 4, "H", "W"])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["N", 2, "H", "W"])], [w],
    )  # fmt: skip
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), str(path))


@pytest.mark.parametrize("flags, exact", [("avx2 fma", True), ("avx2 avx512_vnni", False)])
def test_onnxruntime_asks_for_its_exact_int8_kernels_where_the_cpu_saturates(cpu, tmp_path, flags, exact):
    cpu("x86_64", flags)
    _tiny_onnx(tmp_path / "tiny.onnx")
    runner = onnxruntime_runner.OnnxRuntimeRunner(tmp_path / "tiny.onnx")
    options = runner.session.get_session_options()
    if exact:
        assert options.get_session_config_entry("session.x64quantprecision") == "1"
    else:  # left to ONNX Runtime's default kernels, which VNNI keeps exact
        with pytest.raises(RuntimeError, match="x64quantprecision"):
            options.get_session_config_entry("session.x64quantprecision")
    np.testing.assert_allclose(runner.infer(np.ones((1, 4, 3, 3), np.float32)), 4.0)


class _Fixed(Runner):
    """A fake runner returning fixed logits: the validation logic, not a backend, is under test."""

    def __init__(self, name: str, logits: np.ndarray) -> None:
        self.name, self.logits = name, logits

    def infer(self, x: np.ndarray) -> np.ndarray:
        return self.logits


def _pair(flipped: float) -> tuple[_Fixed, _Fixed]:
    """Reference logits with a margin of 0.02 per pixel, and a copy 0.05 away on `flipped` of the pixels."""
    ref = np.zeros((1, 2, 10, 10), np.float32)
    ref[:, 1] = 0.02
    out = ref.copy()
    out.reshape(1, 2, -1)[:, 0, : int(flipped * 100)] = 0.05
    return _Fixed("openvino:fake", out), _Fixed("onnxruntime:fake", ref)


def test_openvino_int8_agreement_is_gated_unless_the_cpu_saturates_with_the_logit_bound_kept_everywhere(cpu, capsys):
    tol, agreement = Tolerance(rtol=0.5, atol=0.5), 0.95
    inputs = {"real images b1": np.zeros((1, 4, 10, 10), np.float32)}
    cpu("x86_64", "avx2 avx512_vnni")
    result = onnx_export.validate_openvino_int8(*_pair(0.4), inputs, tol, agreement)
    assert not result and result.mask_agreement == pytest.approx(0.6) and "cpu_saturates" not in result.summary()
    cpu("x86_64", "avx2")
    result = onnx_export.validate_openvino_int8(*_pair(0.4), inputs, tol, agreement)
    assert result and result.summary()["cpu_saturates"] and result.min_mask_agreement == 0.0
    assert "saturate" in capsys.readouterr().err
    result = onnx_export.validate_openvino_int8(*_pair(0.0), inputs, tol, agreement)
    assert result and capsys.readouterr().err == ""  # nothing to warn about
    broken = onnx_export.validate_openvino_int8(*_pair(0.4), inputs, Tolerance(rtol=0.0, atol=0.01), agreement)
    assert not broken  # the logit bound still gates on a saturating CPU


@pytest.mark.parametrize("flags, warned", [("avx2 fma", True), ("avx512f avx512_bf16", False), ("amx_bf16 amx_tile", False)])
def test_bf16_training_warns_on_a_cpu_that_emulates_bfloat16(cpu, tmp_path, capsys, flags, warned):
    import torch

    from rcr_deploy.train import trainer

    cpu("x86_64", flags)
    cfg = train_config(tmp_path, tmp_path / "run", amp="bf16")
    assert trainer._autocast_dtype(cfg, torch.device("cpu")) == torch.bfloat16  # a warning, not a refusal
    assert ("no native bfloat16" in capsys.readouterr().err) == warned
