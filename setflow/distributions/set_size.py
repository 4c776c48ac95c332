r"""A density over the number of points of a set, so that a set flow's likelihood is complete:

.. math:: \log p(X) = \log p(N) + \log p(X \mid N),\qquad N = |X|.

:class:`SetSizeDistribution` is a categorical over ``min_points..max_points``. It starts uniform;
``fit(sizes)`` sets it to the empirical frequencies of the training sizes with ``smoothing``
pseudo-counts per size (a floor, so no size of the support gets probability 0), or, with
``learn=True``, its logits are parameters trained with the rest of the flow.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn

from setflow.distributions.base import Distribution

__all__ = ["SetSizeDistribution"]


class SetSizeDistribution(Distribution):
    """Categorical density over set sizes ``min_points..max_points`` (integers).

    Args:
        max_points, min_points: the support.
        learn: the logits are trainable parameters (else a buffer set by :meth:`fit`).
        smoothing: the default pseudo-count per size of :meth:`fit`.

    Shapes:
        - log_prob: ``(B,)`` integer sizes -> ``(B,)``
        - sample: ``num_samples -> (num_samples,)`` int64 sizes

    Example:
        >>> d = SetSizeDistribution(max_points=5, min_points=2)
        >>> round(float(d.log_prob(torch.tensor([3]))[0].exp()), 4)   # uniform over 2..5
        0.25
        >>> _ = d.fit(torch.tensor([3, 3, 3, 4]), smoothing=0.0)
        >>> [round(p, 2) for p in d.probs().tolist()]
        [0.0, 0.75, 0.25, 0.0]
    """

    def __init__(self, max_points: int, min_points: int = 1, learn: bool = False, smoothing: float = 1.0) -> None:
        super().__init__()
        if smoothing < 0:
            raise ValueError(f"smoothing must be >= 0, got {smoothing}")
        self.smoothing = float(smoothing)
        if not 1 <= int(min_points) <= int(max_points):
            raise ValueError(f"set sizes need 1 <= min_points <= max_points, got {min_points}..{max_points}")
        self.min_points, self.max_points = int(min_points), int(max_points)
        logits = torch.zeros(self.max_points - self.min_points + 1)
        if learn:
            self.logits = nn.Parameter(logits)
        else:
            self.register_buffer("logits", logits)
        self.learn = bool(learn)
        self.register_buffer("fitted", torch.tensor(False))

    def probs(self) -> Tensor:
        """Probabilities of the sizes ``min_points..max_points``."""
        return torch.softmax(self.logits, dim=0)

    def check_sizes(self, sizes: Tensor) -> None:
        """Raise a ``ValueError`` unless every size lies in ``min_points..max_points``."""
        if sizes.numel() and (int(sizes.min()) < self.min_points or int(sizes.max()) > self.max_points):
            raise ValueError(f"set sizes must lie in {self.min_points}..{self.max_points} (the model's support), "
                             f"got {int(sizes.min())}..{int(sizes.max())}")

    @torch.no_grad()
    def fit(self, sizes: Tensor, smoothing: Optional[float] = None) -> "SetSizeDistribution":
        """Empirical frequencies of ``sizes`` plus ``smoothing`` pseudo-counts per size of the support
        (default: the constructor's)."""
        smoothing = self.smoothing if smoothing is None else float(smoothing)
        sizes = torch.as_tensor(sizes).reshape(-1).long()
        if sizes.numel() == 0:
            raise ValueError("fit needs at least one set size")
        if smoothing < 0:
            raise ValueError(f"smoothing must be >= 0, got {smoothing}")
        self.check_sizes(sizes)
        counts = torch.bincount(sizes - self.min_points, minlength=self.logits.numel()).double() + float(smoothing)
        self.logits.copy_(torch.log(counts / counts.sum()).to(self.logits))
        self.fitted.fill_(True)
        return self

    def log_prob(self, x: Tensor, context: Optional[Tensor] = None) -> Tensor:
        if x.dtype.is_floating_point and not bool(torch.equal(x, torch.round(x))):
            raise ValueError("SetSizeDistribution scores integer set sizes")
        sizes = x.reshape(-1).long()
        self.check_sizes(sizes)
        return torch.log_softmax(self.logits, dim=0)[sizes - self.min_points]

    def sample(self, num_samples: Optional[int] = None, context: Optional[Tensor] = None) -> Tensor:
        if num_samples is None:
            raise ValueError("SetSizeDistribution.sample needs num_samples")
        if int(num_samples) < 0:
            raise ValueError(f"num_samples must be >= 0, got {num_samples}")
        if int(num_samples) == 0:  # multinomial refuses to draw nothing
            return torch.zeros(0, dtype=torch.long, device=self.logits.device)
        draw = torch.multinomial(self.probs().float(), int(num_samples), replacement=True)
        return draw + self.min_points

    def entropy(self) -> float:
        """Entropy (nats) of the size distribution."""
        p = self.probs().double()
        return float(-(p * torch.log(p.clamp_min(1e-300))).sum())

    def extra_repr(self) -> str:
        return f"sizes {self.min_points}..{self.max_points}, learn={self.learn}"
