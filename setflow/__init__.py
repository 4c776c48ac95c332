"""setflow: permutation-invariant set flows and learned lossless compression on one SurVAE layer library."""

import os as _os

# OpenMP threads that spin while they wait (libgomp's default) make every parallel region of a training step
# wait out a descheduled peer when another process competes for the cores; sleeping waits do not. Read once
# by the OpenMP runtime when torch is loaded, so it only takes effect when setflow is imported first (the
# CLI); an explicit OMP_WAIT_POLICY is kept. See docs/performance.md.
_os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"
