r"""The set-conditioner contract: :class:`SetConditioner`, its typed :class:`ConditionerSpec`, and the
shared input embedding :class:`PointEmbedding`.

A *set conditioner* is the network inside a coupling layer of a set flow. Every one of them

- maps points to points: ``x (B, N, D_in) -> (B, N, D_out)``;
- is called as ``net(x, context=None, mask=None)``:

  * ``context``: ``(B, C)`` float features of each set (``(B, N, C)`` per point is accepted
    too). A net built with ``context_features=C`` needs it; a net built without refuses one
    (a silently ignored context is a conditional model that does not condition);
  * ``mask``: ``(B, N)`` bool, True = a real point, ``None`` = every point is real. Padded
    points are never attended to, pooled or used as neighbours, and the padded entries of
    ``x`` are zeroed on entry, so the outputs at real points do not depend on the padding
    (not even on NaN there). Outputs at padded points are finite and meaningless;

- is permutation-**equivariant** in the points (permuting the rows of ``x`` and ``mask``
  permutes the output rows the same way), except with ``positional=True`` on the nets that
  have learned positions (:attr:`SetConditioner.accepts_positions`), meant for the point-wise
  coupling of sorted sets;
- starts at an exactly zero output by default (``zero_init=True``: the read-out's weight and
  bias are zero), so a coupling built on it starts as the identity;
- refuses bad input with a one-line ``ValueError`` that names the expected layout
  (:meth:`SetConditioner.check_input`).

Each concrete conditioner is registered in :data:`setflow.registry.SET_CONDITIONERS` under its
config name and is built from a :class:`ConditionerSpec` by :meth:`SetConditioner.from_spec`.
``tests/test_conditioner_contract.py`` checks every registered one against this contract.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import ClassVar, Optional

import torch
from torch import Tensor, nn

from setflow.nn.mlp import broadcast_context

__all__ = ["ConditionerSpec", "PointEmbedding", "SetConditioner", "attention_key_mask"]


@dataclass(frozen=True)
class ConditionerSpec:
    """Typed hyper-parameters of a set conditioner (what ``model_args`` of a set flow name).

    Each conditioner reads the fields it has (see its :meth:`SetConditioner.from_spec`); the
    others are unused by it. Width-like fields name the nets' own arguments as follows:
    ``d_model`` is the token width of the attention nets and the ``hidden`` width of DeepSets and
    the EdgeConv nets; ``k`` the neighbours of the kNN nets; ``num_inducing`` the inducing points
    of ISAB.

    Args:
        d_model: token / hidden width (>= 1).
        num_heads: attention heads (>= 1, divides ``d_model`` for the attention nets).
        num_layers: blocks / layers (>= 1).
        dim_feedforward: feed-forward width of the attention blocks (>= 1).
        dropout: dropout probability in ``[0, 1)`` (attention nets).
        num_inducing: ISAB inducing points (>= 1).
        k: kNN neighbours per point (>= 1).
        context_features: width ``C`` of the context, ``None`` for an unconditional net.
        fused: the set transformer's fused CPU fast path (:mod:`setflow.nn.fast`).
    """

    d_model: int = 64
    num_heads: int = 8
    num_layers: int = 2
    dim_feedforward: int = 256
    dropout: float = 0.0
    num_inducing: int = 32
    k: int = 8
    context_features: Optional[int] = None
    fused: bool = False

    def __post_init__(self) -> None:
        for name in ("d_model", "num_heads", "num_layers", "dim_feedforward", "num_inducing", "k"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"conditioner spec: {name} must be an integer >= 1; got {value!r}")
        if not isinstance(self.dropout, (int, float)) or not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"conditioner spec: dropout must be a number in [0, 1); got {self.dropout!r}")
        c = self.context_features
        if c is not None and (isinstance(c, bool) or not isinstance(c, int) or c < 1):
            raise ValueError(f"conditioner spec: context_features must be None or an integer >= 1; got {c!r}")
        if not isinstance(self.fused, bool):
            raise ValueError(f"conditioner spec: fused must be true or false; got {self.fused!r}")

    def as_dict(self) -> dict:
        return asdict(self)


def attention_key_mask(mask: Optional[Tensor]) -> Optional[Tensor]:
    """The key mask for attention: ``mask``, with every point of an all-padding set made a key
    (so no softmax row is empty; such a set has no real output to protect)."""
    if mask is None:
        return None
    return mask | ~mask.any(dim=1, keepdim=True)


class SetConditioner(nn.Module):
    r"""Base class of the set conditioners ``(B, N, D_in) -> (B, N, D_out)`` (contract: module docstring).

    The constructor stores and validates what every conditioner has (``in_features``,
    ``out_features``, ``context_features``, ``positional`` / ``max_len``, ``zero_init``) and
    creates no parameters, so a subclass creates its layers in its own order (its random
    initialisation is unchanged by the base). Subclasses call the helpers:

    - :meth:`readout` for the zero-initialised output layer (or :meth:`zero_readout_` on one);
    - :meth:`context_projection` for the ``Linear(C, width)`` of the context (``None`` without one);
    - :meth:`check_input` first in ``forward``; :meth:`add_context` / :meth:`add_positions` on the
      embedded tokens (or :class:`PointEmbedding`, which does embedding, positions and context);
    - :meth:`from_spec` (classmethod, each subclass) to build from a :class:`ConditionerSpec`.

    Args:
        in_features: features per input point ``D_in`` (>= 1).
        out_features: features per output point ``D_out`` (>= 1).
        context_features: context width ``C``, or ``None``.
        positional: learned per-index positions (only where :attr:`accepts_positions`).
        max_len: largest ``N`` with ``positional`` (required then).
        zero_init: zero read-out (output starts at exactly 0).

    Example:
        >>> from setflow.registry import SET_CONDITIONERS
        >>> net = SET_CONDITIONERS.get("deepsets").from_spec(2, 4, ConditionerSpec(d_model=16))
        >>> x, mask = torch.randn(3, 10, 2), torch.arange(10) < torch.tensor([[10], [7], [4]])
        >>> net(x, mask=mask).shape, bool(net(x, mask=mask).eq(0).all())  # zero-initialised read-out
        (torch.Size([3, 10, 4]), True)
    """

    #: whether the class has learned positions (``positional=True``, for the point-wise coupling)
    accepts_positions: ClassVar[bool] = False

    def __init__(self, in_features: int, out_features: int, *, context_features: Optional[int] = None,
                 positional: bool = False, max_len: Optional[int] = None, zero_init: bool = True) -> None:
        super().__init__()
        name = type(self).__name__
        for arg, value in (("in_features", in_features), ("out_features", out_features)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}: {arg} must be an integer >= 1; got {value!r}")
        if context_features is not None and (not isinstance(context_features, int) or context_features < 1):
            raise ValueError(f"{name}: context_features must be None or an integer >= 1; got {context_features!r}")
        self.refuse_positions(positional)
        if positional and (max_len is None or max_len < 1):
            raise ValueError(f"{name}: positional=True needs max_len, the largest number of points")
        self.in_features = in_features
        self.out_features = out_features
        self.context_features = context_features
        self.positional = bool(positional)
        self.max_len = max_len
        self.zero_init = zero_init

    # ----------------------------------------------------------------------------- building
    @classmethod
    def from_spec(cls, in_features: int, out_features: int, spec: ConditionerSpec, positional: bool = False,
                  max_len: Optional[int] = None) -> "SetConditioner":
        """Build from a :class:`ConditionerSpec` (each registered subclass implements it)."""
        raise NotImplementedError(f"{cls.__name__} does not implement from_spec")

    @classmethod
    def refuse_positions(cls, positional: bool) -> None:
        """A ``ValueError`` for ``positional=True`` on a class without learned positions."""
        if positional and not cls.accepts_positions:
            raise ValueError(f"{cls.__name__} has no learned positions; build it with positional=False")

    @staticmethod
    def zero_readout_(layer: nn.Linear) -> None:
        """Zero ``layer``'s weight and bias (in place)."""
        nn.init.zeros_(layer.weight)
        if layer.bias is not None:
            nn.init.zeros_(layer.bias)

    def readout(self, width: int) -> nn.Linear:
        """The output layer ``Linear(width, out_features)``, zeroed when ``zero_init``."""
        layer = nn.Linear(width, self.out_features)
        if self.zero_init:
            self.zero_readout_(layer)
        return layer

    def context_projection(self, width: int, bias: bool = False) -> Optional[nn.Linear]:
        """``Linear(context_features, width)``, or ``None`` for a net without context."""
        if self.context_features is None:
            return None
        return nn.Linear(self.context_features, width, bias=bias)

    # ----------------------------------------------------------------------------- forward helpers
    def check_input(self, x: Tensor, context: Optional[Tensor] = None,
                    mask: Optional[Tensor] = None) -> tuple[Tensor, Optional[Tensor]]:
        """Validate ``(x, context, mask)``; return ``x`` (padding zeroed when masked) and ``mask``.

        Raises a one-line ``ValueError`` naming the expected layout for a wrong ``x``, a context
        given to a net without ``context_features`` (or missing from one with), a context of the
        wrong shape, or a mask that is not ``(B, N)`` bool.
        """
        name = type(self).__name__
        if not isinstance(x, Tensor) or x.dim() != 3 or x.shape[-1] != self.in_features:
            got = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(f"{name}: expected x of shape (B, N, {self.in_features}); got {got}")
        B, N = x.shape[0], x.shape[1]
        C = self.context_features
        if context is None and C is not None:
            raise ValueError(f"{name} was built with context_features={C} and needs a context of shape ({B}, {C})")
        if context is not None:
            if C is None:
                raise ValueError(f"{name} was built without context_features and got a context; build it with "
                                 f"context_features={context.shape[-1]} or pass context=None")
            if context.shape[-1] != C or context.shape[0] != B or context.dim() not in (2, 3) or (
                    context.dim() == 3 and context.shape[1] != N):
                raise ValueError(f"{name}: expected context of shape ({B}, {C}) or ({B}, {N}, {C}); "
                                 f"got {tuple(context.shape)}")
        if mask is not None:
            if not isinstance(mask, Tensor) or mask.dtype != torch.bool or mask.shape != (B, N):
                got = f"{tuple(mask.shape)} {mask.dtype}" if isinstance(mask, Tensor) else type(mask).__name__
                raise ValueError(f"{name}: expected mask of shape ({B}, {N}) and dtype bool (True = a real "
                                 f"point); got {got}")
            x = x.masked_fill(~mask.unsqueeze(-1), 0.0)
        return x, mask

    def add_positions(self, h: Tensor, pos: Optional[Tensor]) -> Tensor:
        """``h + pos[:N]`` for a positional net (``pos`` ``(max_len, d)``), ``h`` otherwise."""
        if pos is None:
            return h
        n = h.shape[1]
        if n > pos.shape[0]:
            raise ValueError(f"{type(self).__name__}: set of N={n} points exceeds max_len={pos.shape[0]}")
        return h + pos[:n]

    @staticmethod
    def add_context(h: Tensor, context: Optional[Tensor], proj: Optional[nn.Module]) -> Tensor:
        """``h + proj(context)`` broadcast over the points (``h`` when there is no context)."""
        if context is None or proj is None:
            return h
        return h + broadcast_context(proj(context), h)

    def _contract_repr(self) -> str:
        s = f"in_features={self.in_features}, out_features={self.out_features}"
        if self.positional:
            s += f", positional=True, max_len={self.max_len}"
        if self.context_features is not None:
            s += f", context_features={self.context_features}"
        return s


class PointEmbedding(nn.Module):
    r"""Linear point embedding, plus a learned per-index embedding (``positional``, ``max_len``
    positions, N(0, 0.02^2)) and a projected context ``(B, C)`` (``context_features``, no bias).

    Shapes:
        - x: ``(B, N, in_features)``, context ``(B, C)`` optional -> ``(B, N, d_model)``
    """

    def __init__(self, in_features: int, d_model: int, positional: bool = False, max_len: Optional[int] = None,
                 context_features: Optional[int] = None) -> None:
        super().__init__()
        if positional and not max_len:
            raise ValueError("positional=True needs max_len (the number of positions)")
        self.in_features, self.max_len = in_features, max_len
        self.linear = nn.Linear(in_features, d_model)
        self.pos = nn.Parameter(torch.randn(max_len, d_model) * 0.02) if positional else None
        self.context_proj = nn.Linear(context_features, d_model, bias=False) if context_features else None

    def forward(self, x: Tensor, context: Optional[Tensor] = None) -> Tensor:
        if x.dim() != 3 or x.shape[-1] != self.in_features:
            raise ValueError(f"expected x of shape (B, N, {self.in_features}); got {tuple(x.shape)}")
        h = self.linear(x)
        if self.pos is not None:
            if x.shape[1] > self.max_len:
                raise ValueError(f"got N={x.shape[1]} points but the positional embedding has max_len={self.max_len}")
            h = h + self.pos[: x.shape[1]]
        return SetConditioner.add_context(h, context, self.context_proj)
