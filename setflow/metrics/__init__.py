"""Point-set metrics: Chamfer and EMD distances; MMD, COV, 1-NNA and voxel JSD of sample collections."""

from .distances import chamfer, check_sets, emd, emd_pairs, pairwise_chamfer
from .eval import (METRICS, SetPairs, format_sample_metrics, mmd_cov, nearest_emd, one_nna, pairwise_emd,
                   sample_metrics, voxel_jsd)

__all__ = ["chamfer", "emd", "emd_pairs", "pairwise_chamfer", "pairwise_emd", "check_sets", "mmd_cov", "one_nna",
           "nearest_emd", "voxel_jsd", "sample_metrics", "format_sample_metrics", "METRICS", "SetPairs"]
