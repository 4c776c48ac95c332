"""Real-vs-real reference figures and timing of setflow.metrics on the SpatialMNIST test split.

Usage: python scripts/metrics_reference.py [--data-root DIR]   (one thread; prints one line per row)
"""

import argparse
import time

import torch

from setflow.data import load_spatial_mnist
from setflow.metrics import format_sample_metrics, sample_metrics


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-root", default=None)
    args = ap.parse_args()
    torch.set_num_threads(1)
    d = load_spatial_mnist(data_root=args.data_root, download=False, verbose=False)
    te, tr = d.test, d.train
    n = min(500, len(te))
    t = time.perf_counter()
    sample_metrics(tr[:n], te[:n], metrics=("cd",), progress=False)
    print(f"CD only, {n} vs {n} sets: {time.perf_counter() - t:.1f} s")
    t = time.perf_counter()
    r = sample_metrics(tr[:n], te[:n], progress=False)
    pairs = 2 * n * (2 * n - 1) // 2
    print(f"CD + EMD, {n} vs {n} sets: {time.perf_counter() - t:.1f} s; exact assignments {r['emd']['solved']} "
          f"of {pairs} pairs")
    print(format_sample_metrics(r, f"train[:{n}] vs test"))
    g = torch.Generator().manual_seed(0)
    p = torch.randperm(len(te), generator=g)
    h = len(te) // 2
    print(format_sample_metrics(sample_metrics(te[p[:h]], te[p[h:]], progress=False), "test half vs other half"))
    pool = tr.reshape(-1, tr.shape[-1])
    iid = pool[torch.randint(0, pool.shape[0], (n, tr.shape[1]), generator=g)]
    print(format_sample_metrics(sample_metrics(iid, te[:n], progress=False), "i.i.d. pooled points vs test"))


if __name__ == "__main__":
    main()
