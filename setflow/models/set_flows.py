"""SortFlow and PermuteFlow: permutation-invariant SurVAE flows for point sets (SpatialMNIST).

Both follow SurVAE's SpatialMNIST experiment (Nielsen et al., 2020, section 5.3)::

    x (B, N, D) in pixel units
    -> Sort by a coordinate (SortFlow, exact, ldj = -log N!)  |  StochasticPermutation (PermuteFlow, bound)
    -> x / 28 - 0.5 (ScalarAffine, Jacobian counted: likelihoods stay in pixel units)
    -> sort-consistent SortFlow (default): OrderedIncrements on the sort coordinate
       (first value, log of the N-1 positive gaps), so the latent is ordered by construction
    -> K x [ coordinate-wise affine coupling, equivariant set transformer (no positions)
             Reverse of the coordinates
             point-wise affine coupling, set transformer with learned positions
             fixed Shuffle of the points (SortFlow) | StochasticPermutation (PermuteFlow)
             ActNorm over the coordinates ]
    -> standard normal (N, D)
"""

from __future__ import annotations

import warnings
from typing import Any, Mapping, Optional

import torch
from torch import Tensor, nn

from setflow.distributions import StandardNormal
from setflow.flows import Flow, LabelContext, VectorContext
from setflow.utils import call_net
from setflow.nn.base import ConditionerSpec
from setflow.registry import SET_CONDITIONERS, RegistryError, register_model
from setflow.distributions.set_size import SetSizeDistribution
from setflow.sets import SetBatch, check_size_args, real_first
from setflow.transforms import ActNorm, AffineCoupling, Reverse, ScalarAffine, SetRoll, SetShuffle, Shuffle
from setflow.transforms.stochastic import StochasticPermutation
from setflow.transforms.ordered import OrderedIncrements
from setflow.transforms.surjections import SortSurjection

__all__ = ["SetFlow", "build_set_flow", "build_sortflow", "build_permuteflow", "CONDITIONERS"]


class _FirstPoints(nn.Module):
    """Run a sequence network on ``x_a`` and keep the first ``n_b`` outputs (``n_a >= n_b``)."""

    def __init__(self, net: nn.Module, n_b: int) -> None:
        super().__init__()
        self.net = net
        self.n_b = n_b

    def forward(self, x: Tensor, context: Optional[Tensor] = None, mask: Optional[Tensor] = None) -> Tensor:
        out = call_net(self.net, x, context, mask)
        return out if out.shape[1] == self.n_b else out[:, : self.n_b]


class _ConcatContext(nn.Module):
    """Run ``net`` on ``[x, context]``: the context ``(B, C)`` appended to every point's features.

    Equal to adding a linear map of the context after the input layer, and it keeps the
    conditioner on its fused (context-free) path.
    """

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: Tensor, context: Optional[Tensor] = None, mask: Optional[Tensor] = None) -> Tensor:
        if context is None:
            raise ValueError("this conditioner belongs to a conditional flow and needs its context")
        c = context.to(x.dtype)[:, None, :].expand(x.shape[0], x.shape[1], context.shape[-1])
        return call_net(self.net, torch.cat([x, c], dim=-1), None, mask)


def _set_conditioner(name: str, arg: str):
    """The registered set conditioner class ``name`` (:data:`setflow.registry.SET_CONDITIONERS`);
    an unknown name raises the registry's error, prefixed with the model argument that named it."""
    try:
        return SET_CONDITIONERS.get(name)
    except RegistryError as e:
        raise RegistryError(f"model_args.{arg}: {e}") from None


#: the set conditioners by name (``isab``, ``knn`` scale as O(N m), O(N k); with ``positional``
#: they also serve the point-wise coupling): the registry itself, kept under its old name
CONDITIONERS = SET_CONDITIONERS


class SetFlow(Flow):
    """A :class:`Flow` over sets ``(B, N, D)`` that validates its input and knows its set size.

    The buffer ``sort_consistent`` records whether the latent flow holds an
    :class:`OrderedIncrements` layer. A state dict without it (a checkpoint from before that
    option) is the paper SortFlow: loading one drops the layer, so the model scores as trained.

    A variable-size flow (``num_points=None``, sets of up to ``max_points`` points) takes padded
    batches with ``mask`` and holds ``size_dist``, the density of the set size.
    """

    def __init__(self, base, transforms, num_points: Optional[int], dim: int, sort_consistent: bool = False,
                 context_encoder: Optional[nn.Module] = None, max_points: Optional[int] = None,
                 size_dist: Optional[SetSizeDistribution] = None) -> None:
        super().__init__(base, transforms, event_shape=(num_points, dim), layout="(B, N, D) = (batch, points, coordinates)",
                         context_encoder=context_encoder, size_dist=size_dist)
        self.num_points = num_points
        self.max_points = num_points if max_points is None else max_points
        self.dim = dim
        self.register_buffer("sort_consistent", torch.tensor(bool(sort_consistent)))

    def _prepare_masked(self, x, mask):
        if (self.variable_size and mask is not None and isinstance(x, Tensor) and x.dim() == 3
                and x.shape[1] > self.max_points and tuple(mask.shape) == tuple(x.shape[:2]) and x.shape[0]):
            # more padding than the model's max_points: move the real points first and drop empty columns
            order = real_first(mask)
            keep = max(int(mask.sum(1).max()), 1)
            x = torch.gather(x, 1, order[:, :keep, None].expand(-1, -1, x.shape[2]))
            mask = torch.gather(mask, 1, order[:, :keep])
        return super()._prepare_masked(x, mask)

    @torch.no_grad()
    def sample(self, num_samples: Optional[int] = None, context: Optional[Tensor] = None,
               num_points=None) -> SetBatch:
        """A :class:`~setflow.sets.SetBatch` of sets drawn from the flow (see :meth:`Flow.sample`): the same
        value for a fixed set size (no padding) as for sets of different sizes."""
        out = super().sample(num_samples, context, num_points)
        if isinstance(out, SetBatch):
            return out
        return SetBatch(out, labels=context if isinstance(self.context_encoder, LabelContext) else None)

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False):
        if "sort_consistent" not in state_dict:
            state_dict = dict(state_dict, sort_consistent=torch.tensor(False))
            if bool(self.sort_consistent):
                warnings.warn("state dict predates model_args.sort_consistent: loaded as the paper SortFlow "
                              "(sort_consistent=false)", stacklevel=2)
                self.transform.transforms = nn.ModuleList(
                    [t for t in self.transforms if not isinstance(t, OrderedIncrements)])
        elif bool(state_dict["sort_consistent"]) != bool(self.sort_consistent):
            raise ValueError(f"state dict has sort_consistent={bool(state_dict['sort_consistent'])} but the model "
                             f"was built with sort_consistent={bool(self.sort_consistent)}; set model_args to match")
        return super().load_state_dict(state_dict, strict=strict, assign=assign)


def build_set_flow(
    num_points: Optional[int] = 50,
    dim: int = 2,
    num_steps: int = 32,
    d_model: int = 64,
    num_heads: int = 8,
    num_layers: int = 2,
    dim_feedforward: int = 256,
    dropout: float = 0.0,
    scale_fn: str = "softplus",
    permutation: str = "sort",
    sort_key: int | str = 0,
    sort_consistent: Optional[bool] = None,
    sort_min_gap: Optional[float] = 1e-6,
    conditioner: str = "transformer",
    point_conditioner: str = "transformer",
    num_inducing: int = 32,
    knn_k: int = 8,
    input_scale: float = 1.0 / 28.0,
    input_shift: float = -0.5,
    fused: bool = False,
    conditional: bool = False,
    num_classes: int = 10,
    context_dim: int = 32,
    context_features: Optional[int] = None,
    max_points: Optional[int] = None,
    min_points: int = 1,
    size_smoothing: float = 1.0,
    learn_size: bool = False,
    point_mix: str = "shuffle",
    seed: int = 0,
) -> SetFlow:
    """Build a SortFlow (``permutation="sort"``) or a PermuteFlow (``permutation="stochastic"``).

    Args:
        num_points, dim: set size ``N`` and point dimension ``D``.
        num_steps: flow steps ``K``.
        d_model, num_heads, num_layers, dim_feedforward, dropout: transformer conditioners.
        scale_fn: coupling scale function (see :data:`setflow.transforms.SCALE_FNS`).
        permutation: ``"sort"`` (exact likelihood) or ``"stochastic"`` (lower bound).
        sort_key: coordinate (or name) the sort surjection orders the points by (ties broken
            lexicographically by the other coordinates).
        sort_consistent: SortFlow only (``None`` = ``True`` for sort, ``False`` for stochastic).
            ``True``: an :class:`OrderedIncrements` layer after the input scaling maps the sorted
            key coordinate to (first value, log gaps), so the latent is ordered by construction
            and the density is normalised over sets; ``False``: the paper's SortFlow, whose
            density integrates to P(sorted) < 1 (see :func:`setflow.transforms.sorted_fraction`).
        sort_min_gap: with ``sort_consistent``, gaps in the key below this (in scaled units,
            ``x * input_scale + shift``) are clamped to it (exact ties otherwise give -inf);
            ``None`` makes ties an error instead.
        conditioner: equivariant net of the coordinate-wise coupling: ``transformer``,
            ``deepsets``, ``edgeconv`` (kNN graph + PyG EdgeConv), ``isab`` (induced attention,
            ``num_inducing`` points) or ``knn`` (chunked kNN + dense EdgeConv, ``knn_k`` neighbours; both
            kNN nets use ``min(knn_k, N - 1)`` in a set of ``N`` points, ties by coordinates).
        point_conditioner: net of the point-wise coupling, with learned positions where it has
            them (``transformer``, ``isab``, ``knn``); ``isab`` / ``knn`` keep a step O(N).
        input_scale, input_shift: the fixed affine pre-processing ``x * scale + shift``.
        fused: the set transformers' fused CPU fast path (:mod:`setflow.nn.fast`; same maths, hash
            dropout). A model argument, so a checkpoint restores it; an old config's ``train.fused``
            is mapped onto it by :func:`setflow.models.build.build_from_config`.
        conditional: class-conditional flow: a learned embedding (:class:`~setflow.flows.LabelContext`,
            ``num_classes`` labels -> ``context_dim`` features) of the integer label ``(B,)`` is fed
            to every conditioner (appended to each point's input features, which keeps the fused
            conditioners usable); ``log_prob``, ``iwbo`` and ``sample`` then need ``context=labels``.
        context_features: a flow conditioned on a float vector ``(B, context_features)``
            (:class:`~setflow.flows.VectorContext`; e.g. the shape code ``z`` of the latent set flow,
            :mod:`setflow.models.latent`), fed to the conditioners the same way as the label embedding.
            Not with ``conditional``.
        max_points, min_points: ``num_points: null`` builds a flow over sets of any size in
            ``min_points..max_points``: every layer takes masks (the point-wise coupling splits by
            the parity of the position, :class:`~setflow.transforms.SetShuffle` replaces the fixed
            shuffles), and ``log p(X) = log p(N) + log p(X | N)`` with a
            :class:`~setflow.distributions.SetSizeDistribution` over ``N``. Every layer takes sets down
            to 1 point, alone or padded (a parity coupling with no odd point is the identity, the kNN
            conditioners take ``min(knn_k, N - 1)`` neighbours), so a set scores the same alone, in a
            padded batch and in any size bucket.
        size_smoothing, learn_size: that size density: fitted by the trainer to the training sizes
            with ``size_smoothing`` pseudo-counts per size, or (``learn_size``) trained as logits.
        point_mix: variable-size SortFlow, what reorders the real points between steps:
            ``"shuffle"`` (:class:`~setflow.transforms.SetShuffle`, a fixed permutation per set size)
            or ``"roll"`` (:class:`~setflow.transforms.SetRoll` by one place: the sorted order keeps
            its positions, so the parity couplings alternate and know where the first point is).
        seed: seed of the fixed shuffles and 1x1 initialisations (reproducible builds).
    """
    if point_mix not in ("shuffle", "roll"):
        raise ValueError(f"point_mix must be 'shuffle' or 'roll', got {point_mix!r}")
    variable = check_size_args(num_points, max_points, min_points)
    size_points = int(max_points) if variable else num_points
    if permutation not in ("sort", "stochastic"):
        raise ValueError(f"permutation must be 'sort' or 'stochastic', got {permutation!r}")
    coord_cls = _set_conditioner(conditioner, "conditioner")
    point_cls = _set_conditioner(point_conditioner, "point_conditioner")
    spec = ConditionerSpec(d_model=d_model, num_heads=num_heads, num_layers=num_layers,
                           dim_feedforward=dim_feedforward, dropout=dropout, num_inducing=num_inducing, k=knn_k,
                           fused=fused)
    point_pos = point_cls.accepts_positions  # learned positions where the net has them
    if sort_consistent is None:
        sort_consistent = permutation == "sort"
    if sort_consistent and permutation != "sort":
        raise ValueError("sort_consistent=true needs the SortFlow (permutation='sort'); PermuteFlow has no sort")
    if sort_consistent and not input_scale > 0:
        raise ValueError(f"sort_consistent needs input_scale > 0 (the scaling must keep the order), got {input_scale}")
    if dim < 2 or size_points < 2:
        raise ValueError(f"set flows need D >= 2 coordinates and N >= 2 points, got N={size_points}, D={dim}")
    if context_features is not None:
        if isinstance(context_features, bool) or not isinstance(context_features, int) or context_features < 1:
            raise ValueError(f"context_features must be None or an integer >= 1, got {context_features!r}")
        if conditional:
            raise ValueError("give conditional (class labels) or context_features (a float vector), not both")
    g_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        if conditional:
            encoder, c_in = LabelContext(num_classes, context_dim), context_dim
        elif context_features is not None:
            encoder, c_in = VectorContext(context_features), context_features
        else:
            encoder, c_in = None, 0

        def with_context(net: nn.Module) -> nn.Module:
            return _ConcatContext(net) if c_in else net

        d_a, d_b = dim - dim // 2, dim // 2
        n_a, n_b = size_points - size_points // 2, size_points // 2
        first = SortSurjection(dim=1, key=sort_key) if permutation == "sort" else StochasticPermutation(dim=1)
        layers: list = [first, ScalarAffine(shift=input_shift, scale=input_scale)]
        if sort_consistent:
            key = first.key_index(dim)
            if key is None:
                raise ValueError(f"sort_consistent needs a coordinate sort key (an int or 'x'/'y'/'z'), got {sort_key!r}")
            # scaled coordinates span about 1, so gaps are about 1/N: log(N * gap) is near 0
            layers.append(OrderedIncrements(coord=key, gap_scale=1.0 / size_points, min_gap=sort_min_gap))
        for k in range(num_steps):
            coord_net = with_context(coord_cls.from_spec(d_a + c_in, 2 * d_b, spec))
            point_net = with_context(point_cls.from_spec(
                dim + c_in, 2 * dim, spec, positional=point_pos, max_len=n_a if point_pos else None))
            if variable:  # even positions condition odd ones (the j-th even point's output serves the j-th odd)
                point_coupling = AffineCoupling(point_net, split_dim=1, split="parity", scale_fn=scale_fn,
                                                params_dim=-1)
                mix = ((SetShuffle(seed=seed * 1000 + k) if point_mix == "shuffle" else SetRoll(1))
                       if permutation == "sort" else StochasticPermutation(1))
            else:
                point_coupling = AffineCoupling(_FirstPoints(point_net, n_b), split_dim=1, split_sizes=(n_a, n_b),
                                                scale_fn=scale_fn, params_dim=-1)
                mix = Shuffle(num_points, dim=1, seed=seed * 1000 + k) if permutation == "sort" else StochasticPermutation(1)
            layers += [
                AffineCoupling(coord_net, split_dim=-1, split_sizes=(d_a, d_b), scale_fn=scale_fn),
                Reverse(dim=-1),
                point_coupling,
                mix,
                ActNorm(dim, feature_dim=-1),
            ]
        size_dist = (SetSizeDistribution(int(max_points), int(min_points), learn=learn_size, smoothing=size_smoothing)
                     if variable else None)
        return SetFlow(StandardNormal((num_points, dim)), layers, num_points, dim, sort_consistent=sort_consistent,
                       context_encoder=encoder, max_points=size_points, size_dist=size_dist)
    finally:
        torch.random.set_rng_state(g_state)


@register_model("sortflow", args_of=build_set_flow, fixed=("permutation",))
def build_sortflow(**kwargs) -> SetFlow:
    """SortFlow: sort surjection first, exact log-likelihood."""
    return build_set_flow(permutation="sort", **kwargs)


@register_model("permuteflow", args_of=build_set_flow, fixed=("permutation",))
def build_permuteflow(**kwargs) -> SetFlow:
    """PermuteFlow: stochastic permutations, evaluated with the IWBO."""
    return build_set_flow(permutation="stochastic", **kwargs)
