r"""Inference surjections (SurVAE): deterministic data -> latent, stochastic latent -> data.

Each ``forward`` returns ``(z, ldj)`` with ``ldj = log p(x | z)``, the exact
likelihood contribution of the information the layer throws away; ``inverse``
samples that information back. ``Flow.log_prob`` stays exact through them.

=====================  ===========================  =============================================
layer                  forward                      ldj
=====================  ===========================  =============================================
SortSurjection         sort the points of a set     :math:`-\log N!`
AbsSurjection          :math:`|x|`                  :math:`\log p(\mathrm{sign}(x) \mid |x|)`
MaxPool2dSurjection    k x k max pool               :math:`\log p(k \mid z) + \log p(x_{-k} \mid z, k)`
Slice                  keep the first entries       :math:`\log p(x_\mathrm{drop} \mid z)`
=====================  ===========================  =============================================
"""

from __future__ import annotations

import math
import pickle
from typing import Callable, Optional, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from setflow.distributions.base import ConditionalDistribution, Distribution
from setflow.distributions.normal import normal_log_prob
from setflow.transforms.base import Surjection, sum_except_batch
from setflow.sets import check_mask, lengths_to_mask
from setflow.transforms.permutation_utils import (permute_along, permute_real_points, random_permutations,
                                                  random_rank_permutations)
from setflow.utils import call_net

__all__ = ["SortSurjection", "AbsSurjection", "MaxPool2dSurjection", "Slice"]

_NAMED_KEYS = {"x": 0, "y": 1, "z": 2}
_LOG2 = math.log(2.0)
_HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)


class SortSurjection(Surjection):
    r"""Sort the points of a set: the density becomes permutation invariant, exactly.

    ``forward`` sorts the ``N`` points (along ``dim``) in a total order and returns
    ``ldj = -log N!`` (``-lgamma(N + 1)``) for every set: the sorted set has
    ``N!`` preimages, each equally likely under ``p(x | z)``. ``inverse`` applies a
    fresh uniform random permutation to each set.

    The order is lexicographic: by the key first, ties in the key broken by the
    remaining coordinates in index order (for an ``int`` key, every other coordinate;
    for ``"norm"`` or a function, all coordinates). Points equal in the key and in
    every coordinate are identical, so the sorted tuple, hence ``log_prob``, is the
    same for every permutation of the input, ties and duplicates included.

    Args:
        dim: the points dimension (``1`` for ``(B, N, D)``).
        key: what to sort by: a coordinate index (``int``), a name (``"x"``, ``"y"``,
            ``"z"`` = coordinates 0, 1, 2; ``"norm"`` = Euclidean norm of each point),
            or a picklable callable ``(B, N, D) -> (B, N)`` (a module-level function,
            not a lambda: modules must pickle). For ``(B, N)`` inputs (scalar points)
            the values themselves are sorted.

    With ``mask`` (``(B, N)`` bool, sets of different sizes) the ``N_i`` real points of each set
    are sorted to the front and the padding kept at the end (``forward_mask`` is then the
    prefix mask of the sizes), with ``ldj = -log N_i!`` per set; ``inverse`` permutes the real
    points only.

    Shapes:
        - x: ``(B, N, D)`` or ``(B, N)``; z: same shape; ldj: ``(B,)``

    Example:
        >>> t = SortSurjection(key="x")
        >>> x = torch.tensor([[[3.0, 0.0], [1.0, 5.0], [2.0, 1.0]]])
        >>> z, ldj = t(x)
        >>> z[0, :, 0], round(float(ldj[0]), 4)
        (tensor([1., 2., 3.]), -1.7918)
    """

    stochastic_forward = False
    stochastic_inverse = True

    def __init__(self, dim: int = 1, key: Union[int, str, Callable[[Tensor], Tensor]] = 0):
        super().__init__()
        if isinstance(key, str):
            if key not in _NAMED_KEYS and key != "norm":
                raise ValueError(f"unknown sort key {key!r}; use an int, one of 'x', 'y', 'z', 'norm', or a function")
        elif callable(key):
            try:
                pickle.dumps(key)
            except Exception as err:  # lambdas, closures, bound methods of unpicklable objects
                raise TypeError(
                    "SortSurjection key functions must be picklable (define them at module level, not as lambdas)"
                ) from err
        elif not isinstance(key, int):
            raise TypeError(f"key must be an int, a name or a callable, got {type(key).__name__}")
        self.dim = dim
        self.key = key

    def scores(self, x: Tensor) -> Tensor:
        """The ``(B, N)`` values the points are sorted by."""
        n = x.shape[self.dim]
        if x.dim() == 2:
            s = x
        elif self.key == "norm":
            s = x.norm(dim=-1)
        elif isinstance(self.key, (int, str)):
            idx = _NAMED_KEYS.get(self.key, self.key) if isinstance(self.key, str) else self.key
            if not -x.shape[-1] <= idx < x.shape[-1]:
                raise ValueError(f"sort key {self.key!r} is out of range for points with {x.shape[-1]} coordinates")
            s = x.select(-1, idx)
        else:
            s = self.key(x)
        if s.shape != (x.shape[0], n):
            raise ValueError(
                f"SortSurjection needs (B, N, D) sets with points along dim={self.dim} and sort scores of shape "
                f"(B, N) = ({x.shape[0]}, {n}); got x {tuple(x.shape)} and scores {tuple(s.shape)}"
            )
        return s

    def log_num_orderings(self, n: int, like: Tensor) -> Tensor:
        """``log N!`` as a tensor with ``like``'s dtype and device."""
        dt = like.dtype if like.is_floating_point() else torch.get_default_dtype()
        return torch.lgamma(torch.tensor(n + 1.0, dtype=dt, device=like.device))

    def key_index(self, num_coords: int) -> Optional[int]:
        """The coordinate the key reads (``0 <= index < num_coords``), or ``None`` for ``"norm"`` / a function."""
        if not isinstance(self.key, (int, str)) or self.key == "norm":
            return None
        idx = _NAMED_KEYS[self.key] if isinstance(self.key, str) else self.key
        return idx % num_coords if -num_coords <= idx < num_coords else None

    def sort_permutation(self, x: Tensor, mask: Optional[Tensor] = None) -> Tensor:
        """``(B, N)`` indices that put the points of ``x`` in lexicographic order (key, then coordinates).

        One stable sort per criterion, from the last tie-breaker to the key: a loop over the
        ``D`` coordinates, never over points. With ``mask`` the padding sorts after every real
        point (and its values take no part).
        """
        s = self.scores(x)
        if mask is not None:
            s = torch.where(mask, s, torch.full((), math.inf, dtype=s.dtype, device=s.device))
        if x.dim() == 2:
            return torch.sort(s, dim=1, stable=True).indices
        num_coords = x.shape[-1]
        key = self.key_index(num_coords)
        perm = torch.arange(s.shape[1], device=x.device).expand(s.shape[0], -1)
        for c in reversed([c for c in range(num_coords) if c != key]):
            v = x.select(-1, c)
            if mask is not None:
                v = torch.where(mask, v, torch.zeros((), dtype=v.dtype, device=v.device))
            v = torch.gather(v, 1, perm)
            perm = torch.gather(perm, 1, torch.sort(v, dim=1, stable=True).indices)
        v = torch.gather(s, 1, perm)
        return torch.gather(perm, 1, torch.sort(v, dim=1, stable=True).indices)

    supports_mask = True

    def _check_mask(self, x: Tensor, mask: Optional[Tensor]) -> Optional[Tensor]:
        if mask is not None and self.dim % x.dim() != 1:
            raise ValueError(f"SortSurjection takes a (B, N) mask of the points along dim 1, not dim={self.dim}")
        return None if mask is None else check_mask(mask, x, min_points=0)

    def forward_mask(self, mask: Optional[Tensor]) -> Optional[Tensor]:
        return None if mask is None else lengths_to_mask(mask.sum(1), mask.shape[1])

    def _ldj(self, x: Tensor, mask: Optional[Tensor]) -> Tensor:
        if mask is None:
            return self.log_num_orderings(x.shape[self.dim], x).expand(x.shape[0])
        dt = x.dtype if x.is_floating_point() else torch.get_default_dtype()
        return torch.lgamma(mask.sum(1).to(dt) + 1.0)

    def forward(self, x: Tensor, context: Optional[Tensor] = None, mask: Optional[Tensor] = None
                ) -> tuple[Tensor, Tensor]:
        mask = self._check_mask(x, mask)
        z = permute_along(x, self.sort_permutation(x, mask), self.dim)
        return z, -self._ldj(x, mask)

    def inverse(self, z: Tensor, context: Optional[Tensor] = None, mask: Optional[Tensor] = None) -> Tensor:
        mask = self._check_mask(z, mask)
        if mask is None:
            perm = random_permutations(z.shape[0], z.shape[self.dim], device=z.device)
            return permute_along(z, perm, self.dim)
        return permute_real_points(z, random_rank_permutations(mask.sum(1), z.shape[1]), mask, self.dim)

    def inverse_with_ldj(self, z: Tensor, context: Optional[Tensor] = None, mask: Optional[Tensor] = None
                         ) -> tuple[Tensor, Tensor]:
        """``(x, +log N!)``: a random permutation of ``z`` and minus this layer's ``ldj`` (sampling direction).

        ``log p(x) = log p(z) - inverse ldj`` holds when ``z`` is already sorted (the latent of a
        sort-consistent flow); otherwise ``sort(x) != z`` and the carried value is not ``log_prob(x)``.
        """
        x = self.inverse(z, context, mask)
        return x, self._ldj(z, self._check_mask(z, mask))

    def extra_repr(self) -> str:
        key = self.key if isinstance(self.key, (int, str)) else getattr(self.key, "__name__", repr(self.key))
        return f"dim={self.dim}, key={key!r}"


class AbsSurjection(Surjection):
    r"""``z = |x|`` elementwise with ``ldj = log p(s | z)``, ``s = sign(x)`` (``sign(0) = +1``).

    Without ``sign_net`` each sign is a fair coin: ``ldj = -D log 2`` for ``D``
    elements per datum. With ``sign_net``, ``sign_net(z)`` (or ``sign_net(z,
    context)`` when a context is given) returns one logit per element for
    ``P(s = +1 | z)``, and ``log p(s | z) = logsigmoid(s * logit)``.
    ``inverse`` samples the signs.

    Shapes:
        - x, z: any ``(B, ...)``; sign_net(z): same shape as z; ldj: ``(B,)``
    """

    stochastic_forward = False
    stochastic_inverse = True

    def __init__(self, sign_net: Optional[nn.Module] = None):
        super().__init__()
        self.sign_net = sign_net

    def _logits(self, z: Tensor, context: Optional[Tensor]) -> Tensor:
        logits = call_net(self.sign_net, z, context)
        if logits.shape != z.shape:
            raise ValueError(f"sign_net must return logits of shape {tuple(z.shape)}, got {tuple(logits.shape)}")
        return logits

    def forward(self, x: Tensor, context: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
        z = x.abs()
        if self.sign_net is None:
            ldj = x.new_full((x.shape[0],), -_LOG2 * x[0].numel())
        else:
            s = torch.where(x >= 0, 1.0, -1.0).to(x.dtype)
            ldj = sum_except_batch(F.logsigmoid(s * self._logits(z, context)))
        return z, ldj

    def inverse(self, z: Tensor, context: Optional[Tensor] = None) -> Tensor:
        if self.sign_net is None:
            p = torch.full_like(z, 0.5)
        else:
            p = torch.sigmoid(self._logits(z, context))
        positive = torch.rand_like(z) < p
        return torch.where(positive, z, -z)


class MaxPool2dSurjection(Surjection):
    r"""``k x k`` max pooling (stride ``k``) of images, with its exact SurVAE likelihood term.

    In every window the maximum ``z`` is kept; the argmax position ``k`` and the
    ``k^2 - 1`` non-negative gaps ``g = z - x_{-k}`` are dropped and modelled by

    .. math::
        \mathrm{ldj} = \log p(k \mid z) + \log p(g \mid z, k) = -\log(k^2) + \log p(g),

    with ``k`` uniform over the window. The gap density is, in order of precedence:
    ``decoder`` (a :class:`Distribution` over ``((k^2-1) C, H/k, W/k)`` non-negative
    values, or a :class:`ConditionalDistribution` given ``context=z``); otherwise a
    half-normal with one scale per channel that is learned when ``learn_scale=True``
    (needs ``num_channels``) and fixed to 1 by default. The default matches SurVAE's
    "simple max pool" image flows, which use ``SimpleMaxPoolSurjection2d`` with a
    fixed ``StandardHalfNormal((3*C, H//2, W//2))`` decoder
    (didriknielsen/survae_flows, ``survae/transforms/surjections/maxpool2d.py`` and
    ``experiments/image/model/pool_flow.py``). Gaps are laid out like SurVAE's:
    ``(B, C, k^2-1, h, w)`` flattened to ``(B, (k^2-1) C, h, w)``; window positions
    are row-major.

    ``inverse`` samples ``k`` uniformly and the gaps from the same density.

    Shapes:
        - x: ``(B, C, H, W)`` with ``H, W`` divisible by ``kernel_size``
        - z: ``(B, C, H/k, W/k)``; ldj: ``(B,)``
    """

    stochastic_forward = False
    stochastic_inverse = True

    def __init__(
        self,
        kernel_size: int = 2,
        decoder: Optional[Distribution] = None,
        num_channels: Optional[int] = None,
        learn_scale: bool = False,
    ):
        super().__init__()
        if kernel_size < 2:
            raise ValueError(f"kernel_size must be >= 2, got {kernel_size}")
        if decoder is not None and learn_scale:
            raise ValueError("give either a decoder or learn_scale=True, not both")
        self.kernel_size = int(kernel_size)
        self.decoder = decoder
        self.learn_scale = learn_scale
        if learn_scale:
            if num_channels is None:
                raise ValueError("learn_scale=True needs num_channels")
            self.log_scale = nn.Parameter(torch.zeros(num_channels))
        else:
            self.register_parameter("log_scale", None)
        k2 = self.kernel_size**2
        others = torch.tensor([[i for i in range(k2) if i != j] for j in range(k2)], dtype=torch.long)
        self.register_buffer("_others", others, persistent=False)

    def _windows(self, x: Tensor) -> Tensor:
        if x.dim() != 4:
            raise ValueError(f"MaxPool2dSurjection expects images (B, C, H, W), got shape {tuple(x.shape)}")
        b, c, h, w = x.shape
        k = self.kernel_size
        if h % k or w % k:
            raise ValueError(f"MaxPool2dSurjection(kernel_size={k}) needs H and W divisible by {k}, got {h}x{w}")
        t = x.reshape(b, c, h // k, k, w // k, k).permute(0, 1, 2, 4, 3, 5)
        return t.reshape(b, c, h // k, w // k, k * k)

    def _unwindows(self, xs: Tensor) -> Tensor:
        b, c, h, w, _ = xs.shape
        k = self.kernel_size
        t = xs.reshape(b, c, h, w, k, k).permute(0, 1, 2, 4, 3, 5)
        return t.reshape(b, c, h * k, w * k)

    def _gap_scale(self, like: Tensor) -> Optional[Tensor]:
        if self.log_scale is None:
            return None
        return self.log_scale.to(like.dtype).view(1, -1, 1, 1, 1)

    def _gap_log_prob(self, gaps: Tensor, z: Tensor) -> Tensor:
        """``log p(g)`` for gaps laid out ``(B, C, h, w, k^2-1)``."""
        if self.decoder is not None:
            b, c, h, w, m = gaps.shape
            flat = gaps.permute(0, 1, 4, 2, 3).reshape(b, c * m, h, w)
            if isinstance(self.decoder, ConditionalDistribution):
                return self.decoder.log_prob(flat, context=z)
            return self.decoder.log_prob(flat)
        log_scale = self._gap_scale(gaps)
        if log_scale is None:
            return sum_except_batch(_LOG2 + normal_log_prob(gaps))
        return sum_except_batch(_LOG2 + normal_log_prob(gaps, 0.0, log_scale))

    def _sample_gaps(self, z: Tensor) -> Tensor:
        b, c, h, w = z.shape
        m = self.kernel_size**2 - 1
        if self.decoder is not None:
            if isinstance(self.decoder, ConditionalDistribution):
                flat = self.decoder.sample(context=z)
            else:
                flat = self.decoder.sample(b)
            return flat.to(z.dtype).reshape(b, c, m, h, w).permute(0, 1, 3, 4, 2)
        gaps = torch.randn(b, c, h, w, m, device=z.device, dtype=z.dtype).abs()
        log_scale = self._gap_scale(z)
        return gaps if log_scale is None else gaps * torch.exp(log_scale)

    def forward(self, x: Tensor, context: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
        xs = self._windows(x)
        z, idx = xs.max(dim=-1)
        rest = torch.gather(xs, -1, self._others[idx])
        gaps = z.unsqueeze(-1) - rest
        ldj = self._gap_log_prob(gaps, z) - math.log(xs.shape[-1]) * z[0].numel()
        return z, ldj

    def inverse(self, z: Tensor, context: Optional[Tensor] = None) -> Tensor:
        k2 = self.kernel_size**2
        idx = torch.randint(0, k2, z.shape, device=z.device)
        gaps = self._sample_gaps(z)
        xs = z.new_empty(*z.shape, k2)
        xs.scatter_(-1, idx.unsqueeze(-1), z.unsqueeze(-1))
        xs.scatter_(-1, self._others[idx], z.unsqueeze(-1) - gaps)
        return self._unwindows(xs)

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}, learn_scale={self.learn_scale}"


class Slice(Surjection):
    r"""Keep the first ``num_keep`` entries along ``dim``; ``ldj = log p(x_drop | z)``.

    ``density`` models the dropped part: a :class:`ConditionalDistribution` (called
    with ``context=z``), an unconditional :class:`Distribution`, or ``None`` for a
    standard normal. The standard-normal default does not know the dropped size
    until it sees data: pass ``num_drop`` to sample before any ``forward``.

    Shapes:
        - x: ``(B, ..., num_keep + num_drop, ...)``; z: ``(B, ..., num_keep, ...)``; ldj: ``(B,)``
    """

    stochastic_forward = False
    stochastic_inverse = True

    def __init__(
        self, num_keep: int, dim: int = 1, density: Optional[Distribution] = None, num_drop: Optional[int] = None
    ):
        super().__init__()
        if num_keep < 1:
            raise ValueError(f"num_keep must be >= 1, got {num_keep}")
        if dim == 0:
            raise ValueError("Slice cannot slice the batch dimension")
        self.num_keep = int(num_keep)
        self.dim = dim
        self.density = density
        self.num_drop = None if num_drop is None else int(num_drop)

    def forward(self, x: Tensor, context: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
        size = x.shape[self.dim]
        if size <= self.num_keep:
            raise ValueError(f"Slice(num_keep={self.num_keep}) needs more than {self.num_keep} entries along "
                             f"dim={self.dim}, got shape {tuple(x.shape)}")
        z, x_drop = x.split([self.num_keep, size - self.num_keep], dim=self.dim)
        if self.density is None:
            if self.num_drop is None:
                self.num_drop = size - self.num_keep
            ldj = sum_except_batch(normal_log_prob(x_drop))
        elif isinstance(self.density, ConditionalDistribution):
            ldj = self.density.log_prob(x_drop, context=z)
        else:
            ldj = self.density.log_prob(x_drop)
        return z, ldj

    def inverse(self, z: Tensor, context: Optional[Tensor] = None) -> Tensor:
        if self.density is None:
            if self.num_drop is None:
                raise RuntimeError("Slice with the default density needs num_drop=... to sample before any forward")
            shape = list(z.shape)
            shape[self.dim] = self.num_drop
            x_drop = torch.randn(shape, device=z.device, dtype=z.dtype)
        elif isinstance(self.density, ConditionalDistribution):
            x_drop = self.density.sample(context=z)
        else:
            x_drop = self.density.sample(z.shape[0])
        return torch.cat([z, x_drop.to(z.dtype)], dim=self.dim)

    def extra_repr(self) -> str:
        return f"num_keep={self.num_keep}, dim={self.dim}, num_drop={self.num_drop}"
