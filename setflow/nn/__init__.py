"""Conditioner networks for couplings.

Point-wise: :class:`MLP`. Sets ``(B, N, D)``, permutation-equivariant, each a
:class:`SetConditioner` (the written contract: :mod:`setflow.nn.base`; registered in
:data:`setflow.registry.SET_CONDITIONERS`, built from a :class:`ConditionerSpec`):
:class:`SetTransformer` (without positional embedding), :class:`DeepSets`,
:class:`EdgeConvNet` on a :func:`knn_graph`, :class:`ISABNet` (induced attention, O(N m)),
:class:`KNNEdgeConvNet` on the chunked :func:`knn_neighbors` (O(N k)). Set -> vector, permutation-invariant:
:class:`PooledSetNet` (a set conditioner, masked pooling, an MLP head). Images ``(B, C, H, W)``:
:class:`DenseNet`. Every network takes ``forward(x, context=None)`` (the set conditioners also
``mask=None``, ``(B, N)`` bool, True = a real point) and, by default for the set and image
networks, starts at an exactly zero output. The CPU fast path of
the set transformer (C++ kernels, hash dropout, fused blocks) is :mod:`setflow.nn.fast`; a masked
batch always runs its eager route.

The imports below are the public names only. The conditioner table does not depend on them: the
registry imports every module of this package itself (``SET_CONDITIONERS`` populates from
``"setflow.nn.*"``), so a new file here with ``@register_set_conditioner("name")`` is found without
editing this list (docs/architecture.md, "Registries").
"""

from setflow.nn.attention import ATTENTION_IMPLS, self_attention
from setflow.nn.base import ConditionerSpec, PointEmbedding, SetConditioner, attention_key_mask
from setflow.nn.cpu import split_batch_backward, tune_cpu_allocator
from setflow.nn.deepsets import DeepSets, DeepSetsLayer
from setflow.nn.densenet import DenseBlock, DenseLayer, DenseNet
from setflow.nn.graph import EdgeConvNet, knn_graph
from setflow.nn.isab import ISAB, PMA, ISABNet
from setflow.nn.knn import KNNEdgeConvNet, knn_edge_index, knn_neighbors
from setflow.nn.mlp import ACTIVATIONS, MLP, get_activation
from setflow.nn.pooling import PooledSetNet
from setflow.nn.set_transformer import SetTransformer, SetTransformerBlock, set_fused

__all__ = [
    "ACTIVATIONS",
    "ATTENTION_IMPLS",
    "ConditionerSpec",
    "DeepSets",
    "DeepSetsLayer",
    "DenseBlock",
    "DenseLayer",
    "DenseNet",
    "EdgeConvNet",
    "ISAB",
    "ISABNet",
    "KNNEdgeConvNet",
    "PMA",
    "PooledSetNet",
    "MLP",
    "PointEmbedding",
    "SetConditioner",
    "SetTransformer",
    "SetTransformerBlock",
    "attention_key_mask",
    "get_activation",
    "knn_edge_index",
    "knn_graph",
    "knn_neighbors",
    "self_attention",
    "set_fused",
    "split_batch_backward",
    "tune_cpu_allocator",
]
