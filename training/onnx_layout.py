"""The exported graph's layout for ONNX Runtime's CPU kernels: each 3D convolution whose
kernel spans more than one slice becomes the same convolution as one 2D convolution.

Why: ONNX Runtime runs a 3D Conv by unrolling the input (im2col) and one matrix product
with as many rows as output channels, few in these networks (8 to 32): memory-bound,
and a 1-channel 7x7x7 stem unrolls 343 values per output position. Its 2D Conv has
direct kernels over channel-blocked (NCHWc) data, with nothing unrolled. A 3D kernel
of depth ``kd`` is ``kd`` 2D kernels applied to ``kd`` neighbouring slices and summed,
which is one 2D convolution whose input channels are those slices' channels side by
side: (B, C, D, H, W) -> (B * D', kd * C, H, W), and back. Measured on the bench's
DenseNet on a 2-core CPU (bench/runtimes.py): ONNX Runtime 1.3-1.7x faster at batch
16; the parity check of every export compares the result with the PyTorch network,
and the export keeps the plain graph where that times faster (training/runtime_choice.py).

Only the export sees this: training and checkpoints keep the network as it is, and
``fold_depth`` works on a copy."""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn


class DepthFoldedConv(nn.Module):
    """``conv`` (an nn.Conv3d with zero padding, no groups, no dilation) computed as
    one 2D convolution over depth windows stacked on the channel axis; ``norm`` (an
    eval-mode BatchNorm3d right after it) folded into its weights and ``relu`` applied
    before the layout goes back, where ONNX Runtime fuses both into the convolution."""

    def __init__(self, conv: nn.Conv3d, norm: nn.BatchNorm3d | None = None, relu: bool = False):
        super().__init__()
        if not foldable(conv):
            raise ValueError(f"cannot fold {conv}")
        self.in_channels = conv.in_channels
        self.depth, self.depth_stride, self.depth_padding = conv.kernel_size[0], conv.stride[0], conv.padding[0]
        self.stride, self.padding = tuple(conv.stride[1:]), tuple(conv.padding[1:])
        self.relu = relu
        weight = conv.weight.detach()
        bias = conv.bias.detach() if conv.bias is not None else None
        if norm is not None:
            scale = norm.weight.detach() / torch.sqrt(norm.running_var + norm.eps)
            shift = norm.bias.detach() - norm.running_mean * scale
            weight = weight * scale.reshape(-1, 1, 1, 1, 1)
            bias = shift if bias is None else bias * scale + shift
        # (out, in, kd, kh, kw) -> (out, kd * in, kh, kw): window-major, as forward stacks them
        self.register_buffer("weight", weight.transpose(1, 2).reshape(weight.shape[0], -1, *weight.shape[3:]).clone())
        self.register_buffer("bias", None if bias is None else bias.clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, d, h, w = x.shape
        c, kd, sd, pd = self.in_channels, self.depth, self.depth_stride, self.depth_padding
        out_depth = (d + 2 * pd - kd) // sd + 1
        # (B, D, C, H, W): each slice's channels together (one channel: the same memory)
        x = x.reshape(b, d, 1, h, w) if c == 1 else x.transpose(1, 2)
        if pd:
            x = F.pad(x, (0, 0, 0, 0, 0, 0, pd, pd))
        if kd > 1 or sd > 1:  # window k of output slice j is input slice j * sd + k
            x = torch.cat([x[:, k : k + sd * (out_depth - 1) + 1 : sd] for k in range(kd)], dim=2)
        y = F.conv2d(x.reshape(b * out_depth, kd * c, h, w), self.weight, self.bias, self.stride, self.padding)
        if self.relu:
            y = F.relu(y)
        return y.reshape(b, out_depth, *y.shape[1:]).transpose(1, 2)


def foldable(module: nn.Module) -> bool:
    """A plain 3D convolution whose kernel spans more than one slice."""
    return (
        isinstance(module, nn.Conv3d)
        and module.groups == 1
        and module.dilation == (1, 1, 1)
        and module.padding_mode == "zeros"
        and isinstance(module.padding, tuple)  # not "same"/"valid"
        and module.kernel_size[0] > 1
    )


def fold_depth(net: nn.Module) -> nn.Module:
    """A copy of ``net`` (in eval mode) with every foldable 3D convolution replaced by
    its DepthFoldedConv; in an nn.Sequential, a BatchNorm3d and ReLU right after it
    go into it (``net`` itself is left as it is)."""
    folded = copy.deepcopy(net).eval()
    for module in list(folded.modules()):
        children = list(module.named_children())
        sequential = isinstance(module, nn.Sequential) and type(module).forward is nn.Sequential.forward
        for i, (name, child) in enumerate(children):
            if not foldable(child):
                continue
            after = [c for _, c in children[i + 1 : i + 3]] if sequential else []
            norm = after[0] if after and type(after[0]) is nn.BatchNorm3d and after[0].track_running_stats else None
            if norm is not None:
                after = after[1:]
            relu = bool(after) and type(after[0]) is nn.ReLU
            setattr(module, name, DepthFoldedConv(child, norm, relu))
            for absorbed, _ in children[i + 1 : i + 1 + (norm is not None) + relu]:
                setattr(module, absorbed, nn.Identity())
    return folded


def count_folded(net: nn.Module) -> int:
    return sum(isinstance(m, DepthFoldedConv) for m in net.modules())
