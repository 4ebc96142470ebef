"""The exported graph's layout (training/onnx_layout.py): a 3D convolution folded into
a 2D one computes the same thing, with the batch norm and ReLU after it absorbed; and
the export that times ONNX Runtime's configurations (training/runtime_choice.py)
records its choice in the model it writes, which opens with it and keeps parity."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from radfusion.training.onnx_layout import DepthFoldedConv, count_folded, fold_depth


def randomised_norm(channels: int) -> nn.BatchNorm3d:
    norm = nn.BatchNorm3d(channels)
    with torch.no_grad():
        norm.running_mean.uniform_(-1, 1)
        norm.running_var.uniform_(0.5, 2)
        norm.weight.uniform_(0.5, 2)
        norm.bias.uniform_(-1, 1)
    return norm


@pytest.mark.parametrize(
    "conv",
    [
        nn.Conv3d(1, 16, 7, stride=2, padding=3, bias=False),  # a DenseNet stem
        nn.Conv3d(32, 8, 3, padding=1),
        nn.Conv3d(3, 5, (3, 1, 2), stride=(2, 1, 3), padding=(2, 0, 1)),
        nn.Conv3d(4, 6, (4, 8, 8), stride=(4, 8, 8)),  # a ViT patch embedding
    ],
)
def test_a_folded_convolution_computes_the_same(conv: nn.Conv3d) -> None:
    torch.manual_seed(0)
    net = nn.Sequential(conv, randomised_norm(conv.out_channels), nn.ReLU(inplace=True)).eval()
    folded = fold_depth(net)
    assert [type(m) for m in folded] == [DepthFoldedConv, nn.Identity, nn.Identity]
    assert type(net[0]) is nn.Conv3d  # the network itself is left as it is
    for shape in ((2, conv.in_channels, 9, 16, 17), (1, conv.in_channels, 8, 16, 16)):
        x = torch.randn(shape)
        torch.testing.assert_close(folded(x), net(x), atol=1e-5, rtol=1e-5)


def test_only_plain_convolutions_spanning_slices_are_folded() -> None:
    net = nn.Sequential(
        nn.Conv3d(4, 4, 1),  # one slice: already a matrix product
        nn.Conv3d(4, 4, 3, padding=1, groups=2),
        nn.Conv3d(4, 4, 3, padding=2, dilation=2),
        nn.Conv3d(4, 4, 3, padding="same"),
        nn.Conv3d(4, 4, (1, 3, 3), padding=(0, 1, 1)),
    ).eval()
    assert count_folded(fold_depth(net)) == 0


def test_a_norm_outside_a_sequential_stays_where_it_is() -> None:
    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.norm = nn.Conv3d(2, 3, 3, padding=1), randomised_norm(3)

        def forward(self, x):
            return self.norm(self.conv(x)) + 1

    net = Block().eval()
    folded = fold_depth(net)
    assert isinstance(folded.conv, DepthFoldedConv) and isinstance(folded.norm, nn.BatchNorm3d)
    x = torch.randn(2, 2, 6, 8, 8)
    torch.testing.assert_close(folded(x), net(x), atol=1e-5, rtol=1e-5)


@pytest.mark.slow
def test_the_timed_export_records_its_choice_and_keeps_parity(tiny_contract, tmp_path: Path) -> None:
    from radfusion.contract import read_contract_from_onnx
    from radfusion.runtime import CPU_PROVIDER, OnnxModel
    from radfusion.training.runtime_choice import export_fastest
    from tests.support.tiny import tiny_net

    net = tiny_net(tiny_contract)
    path = tmp_path / "model.onnx"
    choice = export_fastest(net, tiny_contract, path, rounds=1, budget_s=5)
    recorded = read_contract_from_onnx(path).runtime
    assert recorded == choice
    assert recorded.graph in ("folded", "plain") and recorded.cpus >= 1
    # Every CPU candidate of both graphs was timed, at batch 1 and 16.
    cpu = [name for name in recorded.timings_ms if "/cpu/" in name]
    assert {name.split("/")[0] for name in cpu} == {"folded", "plain"}
    assert all(len(ms) == 2 and min(ms) > 0 for ms in recorded.timings_ms.values())
    model = OnnxModel(path, device="cpu")
    assert model.configuration["recorded"] or recorded.provider != CPU_PROVIDER
    g = torch.Generator().manual_seed(3)
    image = torch.rand(3, 1, *tiny_contract.image.target_shape, generator=g)
    genomics = torch.randn(3, len(tiny_contract.genomics.features), generator=g)
    clinical, presence = torch.zeros(3, 1), torch.ones(3, len(tiny_contract.modalities))
    with torch.no_grad():
        expected = net(image, genomics, clinical, presence).numpy()
    got = model.logits(image.numpy(), genomics.numpy(), clinical.numpy(), presence.numpy())
    assert np.max(np.abs(expected - got)) < 1e-4
