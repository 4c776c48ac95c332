"""Densities: base classes, Gaussians and discretized logistics (integer latents)."""

from setflow.distributions.base import ConditionalDistribution, Distribution
from setflow.distributions.discretized_logistic import (
    MIN_LOG_SCALE,
    ConditionalDiscretizedLogistic,
    ConditionalDiscretizedLogisticMixture,
    DiscretizedLogistic,
    DiscretizedLogisticMixture,
    discretized_logistic_log_prob,
    discretized_logistic_mixture_cdf,
    discretized_logistic_mixture_log_prob,
    discretized_logistic_mixture_pmf,
    logistic_cdf,
    sample_discretized_logistic_mixture,
)
from setflow.distributions.normal import (
    ConditionalNormal,
    DiagonalNormal,
    StandardHalfNormal,
    StandardNormal,
    normal_log_prob,
)
from setflow.distributions.set_size import SetSizeDistribution

__all__ = [
    "Distribution",
    "ConditionalDistribution",
    "StandardNormal",
    "DiagonalNormal",
    "StandardHalfNormal",
    "ConditionalNormal",
    "normal_log_prob",
    "SetSizeDistribution",
    "MIN_LOG_SCALE",
    "logistic_cdf",
    "discretized_logistic_log_prob",
    "discretized_logistic_mixture_log_prob",
    "discretized_logistic_mixture_pmf",
    "discretized_logistic_mixture_cdf",
    "sample_discretized_logistic_mixture",
    "DiscretizedLogistic",
    "DiscretizedLogisticMixture",
    "ConditionalDiscretizedLogistic",
    "ConditionalDiscretizedLogisticMixture",
]
