"""The ONNX-graph MAC counter, checked by hand and against torch's FlopCounterMode (FLOPs = 2 * MACs)."""

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from rcr_deploy.benchmarks.cost import count_macs_onnx
from rcr_deploy.exporters.onnx import to_proto
from rcr_deploy.models import build_model
from rcr_deploy.reparam import randomize_bn, reparameterize


class _Ops(nn.Module):
    """Every op kind the counter handles: dense, strided, grouped, depth-wise and transposed
    convolutions, a matrix product, and a Resize that must be reported apart from the MACs."""

    in_channels = 3

    def __init__(self) -> None:
        super().__init__()
        self.dense = nn.Conv2d(3, 8, 3, padding=1)
        self.strided = nn.Conv2d(8, 16, 3, stride=2, padding=1, bias=False)
        self.grouped = nn.Conv2d(16, 16, 3, padding=1, groups=4)
        self.depthwise = nn.Conv2d(16, 16, 3, padding=1, groups=16)
        self.up = nn.ConvTranspose2d(16, 8, 4, stride=2, padding=1, groups=2)
        self.fc = nn.Linear(8, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.up(self.depthwise(self.grouped(self.strided(self.dense(x)))))
        y = F.interpolate(y, scale_factor=2.0, mode="bilinear")
        return self.fc(y.mean((2, 3)))


def _flop_counter_macs(model: nn.Module, shape: tuple[int, ...]) -> int:
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model.eval()(torch.zeros(shape))
    flops = counter.get_total_flops()
    assert flops % 2 == 0
    return flops // 2


def test_single_conv_counted_by_hand():
    conv = nn.Conv2d(3, 8, 3, padding=1)
    conv.in_channels = 3
    cost = count_macs_onnx(to_proto(conv, (32, 32), in_channels=3), (1, 3, 32, 32))
    # 8 output channels x 32 x 32 positions x (3 input channels x 3 x 3 taps); the bias is not a MAC.
    assert cost.macs_by_op == {"Conv": 8 * 32 * 32 * 3 * 9}
    assert cost.params == 8 * 3 * 9 + 8


def test_every_op_kind_matches_flop_counter_and_resize_is_reported_apart():
    model = _Ops()
    shape = (2, 3, 64, 64)
    cost = count_macs_onnx(to_proto(model, (64, 64), in_channels=3), shape)
    assert cost.macs == _flop_counter_macs(model, shape)
    assert set(cost.macs_by_op) >= {"Conv", "ConvTranspose"}
    assert cost.macs_by_op["ConvTranspose"] == 2 * (16 * 32 * 32) * (8 // 2) * 16  # input elements x (M/g) x k*k
    assert cost.other_elements["Resize"] == 2 * 8 * 128 * 128


def test_full_rcrnet_deploy_form_matches_flop_counter():
    # The train form is cross-checked the same way in tests/test_bench.py (onnxruntime-unfused).
    torch.manual_seed(0)
    model = build_model("rcrnet")
    randomize_bn(model, torch.Generator().manual_seed(0))
    model = reparameterize(model)
    shape = (1, 4, 96, 96)
    cost = count_macs_onnx(to_proto(model, (96, 96)), shape)
    assert cost.macs == _flop_counter_macs(model, shape)
    assert cost.macs_by_op["ConvTranspose"] > 0


def test_dynamic_batch_scales_macs_linearly():
    conv = nn.Conv2d(4, 4, 3, padding=1, groups=4)
    proto = to_proto(conv, (32, 32), in_channels=4)
    assert count_macs_onnx(proto, (8, 4, 32, 32)).macs == 8 * count_macs_onnx(proto, (1, 4, 32, 32)).macs
