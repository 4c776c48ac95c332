"""The layer library: bijections, surjections and stochastic layers with the ``(z, ldj)`` contract."""

from setflow.transforms.base import (
    Bijection,
    CompositeTransform,
    InverseTransform,
    Surjection,
    Transform,
    sum_except_batch,
)
from setflow.transforms.coupling import SCALE_FNS, AdditiveCoupling, AffineCoupling, round_ste
from setflow.transforms.elementwise import Logit, Sigmoid
from setflow.transforms.linear import Conv1x1, Reverse, ScalarAffine, SetRoll, SetShuffle, Shuffle
from setflow.transforms.normalization import ActNorm
from setflow.transforms.reshape import PermuteAxes, Reshape, Squeeze2d, Unsqueeze2d
from setflow.transforms.augment import Augment
from setflow.transforms.dequantization import UniformDequantization, VariationalDequantization
from setflow.transforms.ordered import OrderedIncrements, sorted_fraction
from setflow.transforms.permutation_utils import inverse_permutation, permute_along, random_permutations
from setflow.transforms.stochastic import VAE, StochasticPermutation
from setflow.transforms.surjections import AbsSurjection, MaxPool2dSurjection, Slice, SortSurjection

__all__ = [
    "Transform",
    "Bijection",
    "Surjection",
    "CompositeTransform",
    "InverseTransform",
    "sum_except_batch",
    "AffineCoupling",
    "AdditiveCoupling",
    "SCALE_FNS",
    "round_ste",
    "ActNorm",
    "Conv1x1",
    "Reverse",
    "Shuffle",
    "SetShuffle",
    "SetRoll",
    "ScalarAffine",
    "Squeeze2d",
    "Unsqueeze2d",
    "Reshape",
    "PermuteAxes",
    "Logit",
    "Sigmoid",
    "SortSurjection",
    "AbsSurjection",
    "MaxPool2dSurjection",
    "Slice",
    "OrderedIncrements",
    "sorted_fraction",
    "Augment",
    "UniformDequantization",
    "VariationalDequantization",
    "StochasticPermutation",
    "VAE",
    "permute_along",
    "random_permutations",
    "inverse_permutation",
]
