"""Small building blocks shared by the encoder and the decoder (same parameter names as published)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class LayerNorm3d(nn.Module):
    """LayerNorm over the channel axis of a ``(B, C, D, H, W)`` tensor, per voxel (eps 1e-6)."""

    def __init__(self, num_channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(num_channels))
        self.bias = nn.Parameter(torch.zeros(num_channels))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        u = x.mean(1, keepdim=True)
        s = (x - u).pow(2).mean(1, keepdim=True)
        x = (x - u) / torch.sqrt(s + self.eps)
        return self.weight[:, None, None, None] * x + self.bias[:, None, None, None]


class MLPBlock(nn.Module):
    """``lin2(act(lin1(x)))`` on the last axis."""

    def __init__(self, embedding_dim: int, mlp_dim: int, act: type[nn.Module] = nn.GELU) -> None:
        super().__init__()
        self.lin1 = nn.Linear(embedding_dim, mlp_dim)
        self.lin2 = nn.Linear(mlp_dim, embedding_dim)
        self.act = act()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin2(self.act(self.lin1(x)))


class MLP(nn.Module):
    """``num_layers`` linear layers with ReLU between them (the decoder's hypernetwork / IoU heads)."""

    def __init__(
        self, input_dim: int, hidden_dim: int, output_dim: int, num_layers: int, sigmoid_output: bool = False
    ) -> None:
        super().__init__()
        self.num_layers = num_layers
        h = [hidden_dim] * (num_layers - 1)
        self.layers = nn.ModuleList(nn.Linear(n, k) for n, k in zip([input_dim] + h, h + [output_dim]))
        self.sigmoid_output = sigmoid_output

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, layer in enumerate(self.layers):
            x = F.relu(layer(x)) if i < self.num_layers - 1 else layer(x)
        if self.sigmoid_output:
            x = torch.sigmoid(x)
        return x


def conv_kernel_eq_stride(x: torch.Tensor, conv: nn.Conv3d, channels_last_out: bool = False) -> torch.Tensor:
    """``conv(x)`` for a Conv3d with kernel == stride and no padding, as one matmul over the patches.

    ``x (B, Cin, D, H, W)`` -> ``(B, Cout, D/k, H/k, W/k)`` (or channels last ``(B, D/k, H/k, W/k, Cout)``).
    Same numbers as the convolution up to float rounding, but a plain GEMM (fast on CPU).
    """
    k = conv.kernel_size[0]
    b, cin, d, h, w = x.shape
    g = (d // k, h // k, w // k)
    patches = x.reshape(b, cin, g[0], k, g[1], k, g[2], k).permute(0, 2, 4, 6, 1, 3, 5, 7)
    out = F.linear(patches.reshape(b, *g, cin * k**3), conv.weight.reshape(conv.out_channels, -1), conv.bias)
    return out if channels_last_out else out.permute(0, 4, 1, 2, 3)
