"""setflow: permutation-invariant set flows and learned lossless compression on one SurVAE layer library."""

__version__ = "0.1.0"
