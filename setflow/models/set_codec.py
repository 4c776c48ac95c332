"""An exact discrete likelihood of pixel multisets: autoregression over the sorted tuple.

A multiset of ``N`` pixels of a ``G x G`` grid is identified with its sorted tuple of linear
indices ``idx_1 <= ... <= idx_N`` (the sort surjection: a bijection between multisets and
sorted tuples). The model factorises

    p(idx_1, ..., idx_N) = prod_i p(idx_i | idx_<i),   support of step i: {idx_{i-1}, ..., G^2 - 1}

(``idx_0 = 0``), a categorical over the gap ``g = idx_i - idx_{i-1} >= 0`` (masked to ``-inf``
where ``idx_{i-1} + g`` leaves the grid), so no unsorted tuple has any mass and ``sum over sorted tuples = 1`` exactly (tested by
enumeration on a tiny grid). ``log_prob`` is therefore the log-probability of the *set*.

Network: step ``i`` reads the embedding of the previous index (its row, column and linear
index, a start token for ``i = 1``) plus a position embedding, through a causal pre-norm
transformer; the head gives ``G^2`` gap logits (plus a learned gap bias); gaps are
mostly small (the next lit pixel in raster order), so the relative parametrisation learns fast. It fits the trainer's contract: ``forward(x) = log_prob(x)``, per-set nats.

Shapes:
    x: ``(B, N)`` int64 sorted indices in ``0..G^2 - 1``  ->  ``log_prob``: ``(B,)`` float.

Example::

    >>> m = SortedSetAR(grid=4, num_points=3, d_model=16, num_heads=2, num_layers=1, dim_feedforward=16)
    >>> m.log_prob(torch.tensor([[0, 0, 5]])).shape
    torch.Size([1])
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from setflow.registry import register_model

__all__ = ["SortedSetAR", "SetStepper", "build_set_codec"]


class SortedSetAR(nn.Module):
    """Causal transformer over sorted pixel indices; see the module docstring.

    Args:
        grid: side of the pixel grid ``G`` (28 for MNIST).
        num_points: set size ``N`` (the longest sequence).
        d_model, num_heads, num_layers, dim_feedforward, dropout: the transformer.
    """

    is_exact = True
    scores_sets = True  # log_prob is of the multiset itself (sorted tuple), not of an ordered sequence

    def __init__(self, grid: int = 28, num_points: int = 50, d_model: int = 64, num_heads: int = 4,
                 num_layers: int = 2, dim_feedforward: int = 128, dropout: float = 0.1) -> None:
        super().__init__()
        if grid < 1 or num_points < 1:
            raise ValueError(f"grid and num_points must be >= 1, got {grid}, {num_points}")
        self.grid, self.num_points = int(grid), int(num_points)
        cells = self.grid * self.grid
        self.cells = cells
        self.tok = nn.Embedding(cells + 1, d_model)  # index cells = start token
        self.row = nn.Embedding(self.grid + 1, d_model)
        self.col = nn.Embedding(self.grid + 1, d_model)
        self.pos = nn.Embedding(self.num_points, d_model)
        layer = nn.TransformerEncoderLayer(d_model, num_heads, dim_feedforward, dropout, activation="gelu",
                                           batch_first=True, norm_first=True)
        self.body = nn.TransformerEncoder(layer, num_layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, cells)
        self.gap_bias = nn.Parameter(torch.zeros(cells))
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def check(self, x: Tensor) -> Tensor:
        """Raise a one-line ``ValueError`` unless ``x`` is ``(B, L)`` sorted integer indices, L <= N."""
        if x.dim() != 2 or not 1 <= x.shape[1] <= self.num_points:
            raise ValueError(f"expected sets of shape (B, L) with 1 <= L <= {self.num_points}, got {tuple(x.shape)}")
        if x.is_floating_point() and not bool((x == x.round()).all()):
            raise ValueError("expected integer pixel indices")
        x = x.long()
        if x.numel() and (int(x.min()) < 0 or int(x.max()) >= self.cells):
            raise ValueError(f"pixel indices must lie in 0..{self.cells - 1}")
        if bool((x[:, 1:] < x[:, :-1]).any()):
            raise ValueError("each set must be sorted (nondecreasing indices): sort it first")
        return x

    def step_log_probs(self, prefix: Tensor) -> Tensor:
        """Log-probabilities of the next *gap* after each prefix position.

        ``prefix`` ``(B, L)``: the first ``L`` indices (``L = 0`` allowed). Returns ``(B, L + 1, G^2)``:
        row ``i`` is ``log p(idx_{i+1} - idx_i = g | idx_<=i)`` for ``g = 0..G^2 - 1`` (``idx_0 = 0``),
        ``-inf`` where ``idx_i + g > G^2 - 1``. The next index is ``idx_i + g``.
        """
        b, length = prefix.shape
        start = torch.full((b, 1), self.cells, dtype=torch.long, device=prefix.device)
        prev = torch.cat([start, prefix.long()], 1)  # (B, L + 1)
        h = self._embed(prev, torch.arange(length + 1, device=prefix.device)[None])
        mask = torch.triu(torch.full((length + 1, length + 1), float("-inf"), dtype=h.dtype, device=h.device), 1)
        return torch.log_softmax(self._gap_logits(self.body(h, mask=mask), prev), -1)

    def _embed(self, prev: Tensor, pos: Tensor) -> Tensor:
        """Input embedding of previous indices ``prev`` (``cells`` = start token) at positions ``pos``."""
        g = self.grid
        first = prev == self.cells
        row = torch.where(first, g, prev // g)
        col = torch.where(first, g, prev % g)
        return self.tok(prev) + self.row(row) + self.col(col) + self.pos(pos)

    def _gap_logits(self, h: Tensor, prev: Tensor, width: int | None = None) -> Tensor:
        """Final norm, head and the on-grid mask: hidden states -> logits of the first ``width`` gaps
        (all ``G^2`` by default; ``-inf`` off the grid)."""
        width = self.cells if width is None else width
        room = self.cells - 1 - torch.where(prev == self.cells, 0, prev)  # largest gap that stays on the grid
        gap = torch.arange(width, device=h.device)
        w, b = self.head.weight[:width], self.head.bias[:width] + self.gap_bias[:width]
        return torch.nn.functional.linear(self.norm(h), w, b).masked_fill(gap > room[..., None], float("-inf"))

    def stepper(self, batch: int) -> "SetStepper":
        """An incremental (key/value-cached) evaluator of :meth:`step_log_probs` for ``batch`` sets."""
        return SetStepper(self, batch)

    def log_prob(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        """Exact log-probability (nats) of each sorted set ``x`` ``(B, L)`` -> ``(B,)``.

        ``context`` is accepted for the trainer's contract and must be ``None``.
        """
        if context is not None:
            raise ValueError("the set codec model takes no context (class-conditional coding is not supported)")
        x = self.check(x)
        lp = self.step_log_probs(x[:, :-1])
        gaps = torch.diff(x, dim=1, prepend=torch.zeros_like(x[:, :1]))
        return lp.gather(-1, gaps[..., None]).squeeze(-1).sum(1)

    def forward(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        return self.log_prob(x, context)

    @torch.no_grad()
    def sample(self, n: int, context: Tensor | None = None, generator: torch.Generator | None = None) -> Tensor:
        """``(n, N)`` sorted sets drawn from the model (linear pixel indices ``row * G + col``).

        ``context`` is accepted for the sampling contract and must be ``None``; ``generator``
        (on the model's device) makes the draw reproducible.
        """
        if context is not None:
            raise ValueError("the set codec model takes no context (class-conditional sampling is not supported)")
        out = torch.empty(n, 0, dtype=torch.long, device=self.head.weight.device)
        for _ in range(self.num_points):
            p = self.step_log_probs(out)[:, -1].exp()
            last = out[:, -1:] if out.shape[1] else out.new_zeros(n, 1)  # idx_0 = 0
            out = torch.cat([out, last + torch.multinomial(p, 1, generator=generator)], 1)
        return out


class SetStepper:
    """Step-by-step evaluation of a :class:`SortedSetAR` over a batch of sets, with each layer's
    keys and values cached: step ``i`` costs one token per set instead of the whole prefix.

    ``step(prev)`` takes the previous index of every set (``(B,)``; ignored at step 0, which reads
    the start token) and returns ``(B, G^2)`` probabilities of the next gap, equal (to rounding)
    to ``model.step_log_probs(prefix)[:, -1].exp()``. ``rows`` (boolean ``(B,)``) scores only those
    sets (the others still advance), ``width`` only the first gaps (the rest have no mass: the
    caller knows them off the grid). The model must be in eval mode (no dropout).

    Shapes:
        prev: ``(B,)`` int64  ->  ``(rows, width)`` float (the model's dtype).
    """

    def __init__(self, model: SortedSetAR, batch: int) -> None:
        if model.training:
            raise ValueError("SetStepper needs the model in eval mode (dropout off)")
        self.model, self.batch, self.t = model, int(batch), 0
        w = model.head.weight
        layers = list(model.body.layers)
        self.heads = layers[0].self_attn.num_heads if layers else 1
        self.hd = w.shape[1] // self.heads
        shape = (model.num_points, self.batch, self.heads, self.hd)  # time-major: a step reads a contiguous prefix
        self.keys = [w.new_empty(shape) for _ in layers]
        self.values = [w.new_empty(shape) for _ in layers]
        self.prev = torch.full((self.batch,), model.cells, dtype=torch.long, device=w.device)

    def step(self, prev: Tensor | None = None, rows: Tensor | None = None, width: int | None = None) -> Tensor:
        m, t = self.model, self.t
        if t >= m.num_points:
            raise ValueError(f"the model codes at most {m.num_points} points per set")
        if t:
            self.prev = prev.long()
        h = m._embed(self.prev, torch.full_like(self.prev, t))  # (B, d)
        b, nh, hd = self.batch, self.heads, self.hd
        for layer, kc, vc in zip(m.body.layers, self.keys, self.values):
            att = layer.self_attn
            q, k, v = torch.nn.functional.linear(layer.norm1(h), att.in_proj_weight, att.in_proj_bias).chunk(3, -1)
            kc[t] = k.view(b, nh, hd)
            vc[t] = v.view(b, nh, hd)
            weights = ((kc[:t + 1] * q.view(b, nh, hd)).sum(-1) / hd ** 0.5).softmax(0)  # (t + 1, B, heads)
            mixed = (weights[..., None] * vc[:t + 1]).sum(0).reshape(b, nh * hd)
            h = h + att.out_proj(mixed)
            h = h + layer.linear2(layer.activation(layer.linear1(layer.norm2(h))))
        self.t = t + 1
        prev = self.prev
        if rows is not None:
            h, prev = h[rows], prev[rows]
        return m._gap_logits(h, prev, width).softmax(-1)


@register_model("set_codec")
def build_set_codec(grid: int = 28, num_points: int = 50, d_model: int = 64, num_heads: int = 4,
                    num_layers: int = 2, dim_feedforward: int = 128, dropout: float = 0.1) -> SortedSetAR:
    """``model: set_codec``: a :class:`SortedSetAR` for integer pixel multisets."""
    return SortedSetAR(grid, num_points, d_model, num_heads, num_layers, dim_feedforward, dropout)
