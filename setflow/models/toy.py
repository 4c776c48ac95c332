r"""2-D toy flows for the abs-surjection study (SurVAE, figure 4).

``toy_flow`` builds a coupling flow on points ``(B, 2)``; with ``abs="learned"`` or
``abs="uniform"`` an absolute-value surjection folds the plane first, so the flow only models
one quadrant and the signs are put back by :math:`p(s \mid |x|)`:

.. math::
    \log p(x) = \log p(|x|) + \log p(s \mid |x|),\qquad s = \mathrm{sign}(x).

* ``abs="uniform"``: ``AbsSurjection()`` with fair coins, ``log p(s | z) = -log 2`` per folded
  coordinate (the right inductive bias for densities symmetric under every sign flip).
* ``abs="learned"``: the folded coordinates are folded **one at a time**, each sign predicted
  by a small net from the already folded value and the remaining coordinates. Forward order
  ``d_last, ..., d_first``, so ``p(s | z) = prod_i p(s_i | z, s_<i)``: any joint sign
  distribution can be learned, including the correlated signs of a checkerboard
  (``sign(x) * sign(y)`` fixed by ``(|x|, |y|)``), which independent per-coordinate signs cannot
  express.

After the fold, an inverse softplus maps the folded coordinates from ``[0, inf)`` to the real
line, so the coupling flow and its ``N(0, I)`` base stay a proper density on the half-plane.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from setflow.distributions import StandardNormal
from setflow.flows import Flow
from setflow.registry import register_model
from setflow.transforms import ActNorm, AffineCoupling, Bijection, Reverse, Surjection
from setflow.transforms.surjections import AbsSurjection

__all__ = ["build_toy_flow", "CoordinateAbs", "SoftplusInverse", "ABS_VARIANTS"]

ABS_VARIANTS = ("none", "learned", "uniform")
_MIN_POS = 1e-12  # |x| below this is treated as this (the inverse softplus is -inf at 0)


def _mlp(in_features: int, out_features: int, hidden: Sequence[int], activation: str) -> nn.Module:
    """The shared MLP (``setflow.nn.MLP``) with a zero-initialised output layer."""
    from setflow.nn import MLP

    return MLP(in_features, out_features, hidden=tuple(hidden), activation=activation, zero_init=True)


class _SignNet(nn.Module):
    """Logit of ``P(sign = +1)`` for one folded coordinate from ``(|x_i|, x_rest)``."""

    def __init__(self, num_other: int, hidden: Sequence[int], activation: str) -> None:
        super().__init__()
        self.net = _mlp(1 + num_other, 1, hidden, activation)

    def forward(self, z: Tensor, context: Optional[Tensor] = None) -> Tensor:
        return self.net(z if context is None else torch.cat([z, context], dim=-1))


class CoordinateAbs(Surjection):
    """Fold one coordinate of ``(B, D)`` points: ``x_i -> |x_i|``, reusing :class:`AbsSurjection`.

    The other coordinates are handed to the sign net as context, so the sign of ``x_i`` may depend
    on all of them. ``sign_net=None`` gives a fair coin (``ldj = -log 2``).

    Shapes:
        x, z: ``(B, D)``; ldj: ``(B,)``
    """

    stochastic_forward = False
    stochastic_inverse = True

    def __init__(self, index: int, sign_net: Optional[nn.Module] = None) -> None:
        super().__init__()
        self.index = int(index)
        self.abs = AbsSurjection(sign_net)

    def _split(self, x: Tensor) -> tuple[Tensor, Tensor]:
        i = self.index
        return x[:, i : i + 1], torch.cat([x[:, :i], x[:, i + 1 :]], dim=1)

    def _join(self, xi: Tensor, rest: Tensor) -> Tensor:
        i = self.index
        return torch.cat([rest[:, :i], xi, rest[:, i:]], dim=1)

    def forward(self, x: Tensor, context: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
        xi, rest = self._split(x)
        zi, ldj = self.abs(xi, rest)
        return self._join(zi, rest), ldj

    def inverse(self, z: Tensor, context: Optional[Tensor] = None) -> Tensor:
        zi, rest = self._split(z)
        return self._join(self.abs.inverse(zi, rest), rest)

    def extra_repr(self) -> str:
        return f"index={self.index}"


class SoftplusInverse(Bijection):
    r"""``z = log(exp(x) - 1)`` on the coordinates ``dims`` (``[0, inf) -> R``), identity elsewhere.

    ``ldj = sum_dims -log(1 - exp(-x))``; inputs are floored at ``1e-12`` so a point exactly on an
    axis stays finite.

    Shapes:
        x, z: ``(B, D)``; ldj: ``(B,)``
    """

    def __init__(self, dims: Sequence[int], num_features: int = 2) -> None:
        super().__init__()
        mask = torch.zeros(num_features, dtype=torch.bool)
        mask[list(dims)] = True
        self.register_buffer("mask", mask, persistent=False)
        self.dims = tuple(int(d) for d in dims)

    def forward(self, x: Tensor, context: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
        xp = x.clamp_min(_MIN_POS)
        neg_em1 = -torch.expm1(-xp)  # 1 - exp(-x) in (0, 1]
        y = xp + torch.log(neg_em1)  # log(expm1(x)), stable for large and small x
        z = torch.where(self.mask, y, x)
        ldj = torch.where(self.mask, -torch.log(neg_em1), torch.zeros_like(x)).sum(dim=1)
        return z, ldj

    def inverse(self, z: Tensor, context: Optional[Tensor] = None) -> Tensor:
        return torch.where(self.mask, F.softplus(z), z)

    def extra_repr(self) -> str:
        return f"dims={self.dims}"


class _CouplingNet(nn.Module):
    def __init__(self, hidden: Sequence[int], activation: str) -> None:
        super().__init__()
        self.net = _mlp(1, 2, hidden, activation)

    def forward(self, x_a: Tensor, context: Optional[Tensor] = None) -> Tensor:
        return self.net(x_a)


def fold_layers(abs: str, abs_dims: Sequence[int], sign_hidden: Sequence[int], activation: str,
                num_features: int = 2) -> list:
    """The layers that fold ``abs_dims`` (empty for ``abs="none"``)."""
    if abs not in ABS_VARIANTS:
        raise ValueError(f"abs must be one of {ABS_VARIANTS}, got {abs!r}")
    if abs == "none":
        return []
    if not abs_dims or any(not 0 <= d < num_features for d in abs_dims) or len(set(abs_dims)) != len(abs_dims):
        raise ValueError(f"abs_dims must be distinct coordinates in [0, {num_features}), got {list(abs_dims)}")
    if abs == "uniform":
        if sorted(abs_dims) == list(range(num_features)):
            return [AbsSurjection()]
        return [CoordinateAbs(d) for d in abs_dims]
    # learned: fold the last listed coordinate first, so its sign is predicted knowing the (still
    # signed) earlier coordinates: p(s | z) = prod_i p(s_i | z, s_<i)
    return [CoordinateAbs(d, _SignNet(num_features - 1, sign_hidden, activation)) for d in reversed(abs_dims)]


@register_model("toy_flow")
def build_toy_flow(
    abs: str = "none",
    abs_dims: Sequence[int] = (0, 1),
    num_flows: int = 4,
    hidden_units: Sequence[int] = (200, 100),
    activation: str = "relu",
    scale_fn: str = "exp",
    actnorm: bool = False,
    sign_hidden: Sequence[int] = (64, 64),
) -> Flow:
    """A 2-D affine-coupling flow, optionally behind an abs surjection.

    Args:
        abs: ``"none"`` (plain flow), ``"learned"`` (sign probabilities from a small net) or
            ``"uniform"`` (fair-coin signs).
        abs_dims: the coordinates to fold (default both).
        num_flows: number of affine couplings (a ``Reverse`` between consecutive ones).
        hidden_units: hidden sizes of each coupling's MLP ``x_a (1) -> (shift, scale) (2)``.
        activation: MLP activation (``relu``, ``gelu``, ...).
        scale_fn: coupling scale function (see ``setflow.transforms.SCALE_FNS``).
        actnorm: put an ``ActNorm`` after every coupling.
        sign_hidden: hidden sizes of each learned sign net.

    Shapes:
        ``log_prob``: ``(B, 2) -> (B,)`` nats; ``sample(n) -> (n, 2)``.

    Example:
        >>> model = build_toy_flow(abs="uniform", num_flows=2, hidden_units=[8])
        >>> model.log_prob(torch.randn(5, 2)).shape
        torch.Size([5])
    """
    if num_flows < 1:
        raise ValueError(f"num_flows must be >= 1, got {num_flows}")
    abs_dims = [int(d) for d in abs_dims]
    transforms: list = fold_layers(abs, abs_dims, sign_hidden, activation)
    if transforms:
        transforms.append(SoftplusInverse(abs_dims))
    for i in range(num_flows):
        transforms.append(AffineCoupling(_CouplingNet(hidden_units, activation), split_dim=-1, split_sizes=(1, 1),
                                         scale_fn=scale_fn))
        if actnorm:
            transforms.append(ActNorm(2, feature_dim=-1))
        if i < num_flows - 1:
            transforms.append(Reverse(dim=-1))
    return Flow(StandardNormal((2,)), transforms, event_shape=(2,), layout="(B, 2)")
