"""DenseNet image conditioner of IDF (Hoogeboom et al., 2019) and SurVAE image flows."""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["DenseBlock", "DenseLayer", "DenseNet"]


class DenseLayer(nn.Module):
    r"""``x -> cat([x, relu(conv_k(drop(relu(conv_1x1(x)))))])``: adds ``growth`` channels.

    The 1x1 convolution keeps the channel count (as in IDF); the ``kernel_size``
    convolution (3x3 by default, "same" padding) produces the new channels.

    Shapes:
        - x: ``(B, C, H, W)``
        - output: ``(B, C + growth, H, W)``
    """

    def __init__(self, in_channels: int, growth: int, dropout: float = 0.0, kernel_size: int = 3) -> None:
        super().__init__()
        if kernel_size % 2 != 1:
            raise ValueError(f"kernel_size must be odd (same padding); got {kernel_size}")
        self.in_channels = in_channels
        self.growth = growth
        self.dropout = float(dropout)
        self.conv1 = nn.Conv2d(in_channels, in_channels, kernel_size=1)
        self.conv2 = nn.Conv2d(in_channels, growth, kernel_size=kernel_size, padding=kernel_size // 2)

    def reset_parameters(self) -> None:
        self.conv1.reset_parameters()
        self.conv2.reset_parameters()

    def forward(self, x: Tensor) -> Tensor:
        h = F.relu(self.conv1(x))
        if self.dropout > 0.0:
            h = F.dropout(h, self.dropout, self.training)
        h = F.relu(self.conv2(h))
        return torch.cat([x, h], dim=1)

    def extra_repr(self) -> str:
        return f"in_channels={self.in_channels}, growth={self.growth}, dropout={self.dropout}"


class DenseBlock(nn.Sequential):
    """``depth`` :class:`DenseLayer` s: ``C -> C + depth * growth`` channels.

    Shapes:
        - x: ``(B, C, H, W)``
        - output: ``(B, C + depth * growth, H, W)``
    """

    def __init__(self, in_channels: int, depth: int, growth: int, dropout: float = 0.0, kernel_size: int = 3):
        super().__init__(
            *(DenseLayer(in_channels + i * growth, growth, dropout, kernel_size) for i in range(depth))
        )
        self.in_channels = in_channels
        self.out_channels = in_channels + depth * growth


class _ResidualDenseBlock(nn.Module):
    """``x + conv_1x1(DenseBlock(x))``: a dense block with a 1x1 transition back to ``C`` channels."""

    def __init__(self, channels: int, depth: int, growth: int, dropout: float, kernel_size: int) -> None:
        super().__init__()
        self.dense = DenseBlock(channels, depth, growth, dropout, kernel_size)
        self.transition = nn.Conv2d(self.dense.out_channels, channels, kernel_size=1)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.transition(self.dense(x))


class DenseNet(nn.Module):
    r"""DenseNet conditioner for image couplings: ``(B, C_in, H, W) -> (B, C_out, H, W)``.

    Every dense layer is ``conv1x1 (C -> C) -> ReLU -> [dropout] -> conv kxk (C -> growth)
    -> ReLU`` and its output is concatenated to its input, so a block of ``depth``
    layers adds ``depth * growth`` channels. Two layouts:

    ``mid_channels=None`` (IDF, Hoogeboom et al. 2019)
        One dense block straight on the input (``num_blocks`` must be 1), then the
        output convolution ``(C_in + depth * growth) -> C_out``. IDF's CIFAR-10
        setting (512 channels over 12 layers) is ``depth=12, growth=43``
        (516 channels; IDF splits exactly 512 unevenly) with ``out_kernel_size=3``.
    ``mid_channels=M`` (SurVAE image flows)
        A 1x1 stem ``C_in -> M``, ``num_blocks`` residual blocks
        ``x + conv1x1(DenseBlock(x))`` (the 1x1 transition maps
        ``M + depth * growth -> M``), then the output convolution ``M -> C_out``.
        SurVAE's setting: ``num_blocks=1, depth=10, growth=64, mid_channels=96``.

    The output convolution is zero-initialised by default, so a coupling that
    uses the network starts as the identity.

    Args:
        in_channels: input channels ``C_in``.
        out_channels: output channels ``C_out``.
        num_blocks: dense blocks (only 1 without ``mid_channels``).
        depth: dense layers per block.
        growth: channels added by each dense layer.
        mid_channels: width of the stem and block outputs; ``None`` for the IDF layout.
        dropout: dropout after the 1x1 convolution of each dense layer (training only).
        kernel_size: kernel of the growth convolutions (odd).
        out_kernel_size: kernel of the output convolution (odd; 1 or 3).
        zero_init: zero the output convolution's weight and bias.
        context_features: width ``C`` of an optional context vector, projected to
            ``C_in`` and added to every pixel of the input. ``context=None`` always
            works; a context given without ``context_features`` is ignored.
        channels_last: run the convolutions in ``torch.channels_last`` memory
            format (weights stored that way, input converted on entry, output
            returned contiguous). Same function; on CPU the oneDNN NHWC kernels
            are ~10-20% faster for forward + backward at IDF sizes.

    Shapes:
        - x: ``(B, C_in, H, W)``
        - context: ``(B, C)``, optional
        - output: ``(B, C_out, H, W)``

    Example:
        >>> net = DenseNet(6, 4, depth=2, growth=8, mid_channels=16)
        >>> net(torch.randn(2, 6, 8, 8)).shape
        torch.Size([2, 4, 8, 8])
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        num_blocks: int = 1,
        depth: int = 12,
        growth: int = 64,
        mid_channels: Optional[int] = None,
        dropout: float = 0.0,
        kernel_size: int = 3,
        out_kernel_size: int = 1,
        zero_init: bool = True,
        context_features: Optional[int] = None,
        channels_last: bool = True,
    ) -> None:
        super().__init__()
        if num_blocks < 1 or depth < 1 or growth < 1:
            raise ValueError(f"num_blocks, depth and growth must be >= 1; got {num_blocks}, {depth}, {growth}")
        if mid_channels is None and num_blocks != 1:
            raise ValueError("the IDF layout (mid_channels=None) has exactly one block; set mid_channels")
        if out_kernel_size % 2 != 1:
            raise ValueError(f"out_kernel_size must be odd; got {out_kernel_size}")
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.num_blocks = num_blocks
        self.depth = depth
        self.growth = growth
        self.mid_channels = mid_channels
        self.dropout = float(dropout)
        self.kernel_size = kernel_size
        self.out_kernel_size = out_kernel_size
        self.zero_init = zero_init
        self.context_features = context_features
        self.channels_last = channels_last
        self.context_proj = nn.Linear(context_features, in_channels) if context_features is not None else None
        if mid_channels is None:
            self.stem: nn.Module = nn.Identity()
            block = DenseBlock(in_channels, depth, growth, dropout, kernel_size)
            self.blocks = nn.Sequential(block)
            head_in = block.out_channels
        else:
            self.stem = nn.Conv2d(in_channels, mid_channels, kernel_size=1)
            self.blocks = nn.Sequential(
                *(_ResidualDenseBlock(mid_channels, depth, growth, dropout, kernel_size) for _ in range(num_blocks))
            )
            head_in = mid_channels
        self.head = nn.Conv2d(head_in, out_channels, kernel_size=out_kernel_size, padding=out_kernel_size // 2)
        self.reset_parameters()
        if channels_last:
            self.to(memory_format=torch.channels_last)

    def reset_parameters(self) -> None:
        """PyTorch's default init for every convolution; zero output conv when ``zero_init``."""
        for m in self.modules():
            if m is not self and isinstance(m, (nn.Conv2d, nn.Linear)):
                m.reset_parameters()
        if self.zero_init:
            nn.init.zeros_(self.head.weight)
            nn.init.zeros_(self.head.bias)

    def forward(self, x: Tensor, context: Optional[Tensor] = None) -> Tensor:
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"expected x of shape (B, {self.in_channels}, H, W); got {tuple(x.shape)}")
        if context is not None and self.context_proj is not None:
            x = x + self.context_proj(context)[:, :, None, None]
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
            return self.head(self.blocks(self.stem(x))).contiguous()
        return self.head(self.blocks(self.stem(x)))

    def extra_repr(self) -> str:
        s = (
            f"in_channels={self.in_channels}, out_channels={self.out_channels}, num_blocks={self.num_blocks}, "
            f"depth={self.depth}, growth={self.growth}, mid_channels={self.mid_channels}, "
            f"dropout={self.dropout}, out_kernel_size={self.out_kernel_size}, zero_init={self.zero_init}"
        )
        if not self.channels_last:
            s += ", channels_last=False"
        if self.context_features is not None:
            s += f", context_features={self.context_features}"
        return s
