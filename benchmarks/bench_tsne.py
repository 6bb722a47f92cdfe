"""t-SNE map speed for 5,000 x 4,096 features (fc7's size): PCA to 50, then t-SNE with openTSNE
and with scikit-learn side by side in one run, then snapping to the grid (greedy and exact).

    python benchmarks/bench_tsne.py                  # 5000 x 4096
    python benchmarks/bench_tsne.py --n 2000 --skip-sklearn

Features are synthetic but shaped like fc7: non-negative (after ReLU), sparse, in 20 clusters.
The quality check printed beside each time is the share of points whose nearest neighbour on
the map is from the same cluster.
"""
import argparse
import os
import pathlib
import sys
import time

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from deepselfie.report.tsne_map import _has_opentsne, embed, grid_shape, snap_to_grid  # noqa: E402


def features(n, d, clusters=20, seed=0):
    rs = np.random.RandomState(seed)
    centers = np.maximum(rs.normal(0, 1, (clusters, d)), 0) * (rs.uniform(size=(clusters, d)) < .3)
    label = rs.randint(0, clusters, n)
    x = np.maximum(centers[label] + rs.normal(0, 0.6, (n, d)), 0).astype(np.float32)
    return x, label


def neighbour_agreement(coords, label, sample=1000):
    from scipy.spatial import cKDTree
    _, idx = cKDTree(coords).query(coords[:sample], k=2)
    return float((label[idx[:, 1]] == label[:sample]).mean())


def timed(what, fn):
    t = time.perf_counter()
    out = fn()
    dt = time.perf_counter() - t
    return out, dt


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=5000)
    ap.add_argument("--d", type=int, default=4096)
    ap.add_argument("--threads", type=int, default=0, help="t-SNE threads (0 = all cores)")
    ap.add_argument("--skip-sklearn", action="store_true")
    args = ap.parse_args()
    threads = args.threads or os.cpu_count()
    x, label = features(args.n, args.d)
    print(f"{args.n} x {args.d} features, {threads} thread(s), {os.cpu_count()} cores")

    from sklearn.decomposition import PCA
    pca, t_pca = timed("pca", lambda: PCA(50, random_state=0).fit_transform(x))
    print(f"PCA to 50 dims:          {t_pca:7.1f} s")
    times = {}
    methods = (["opentsne"] if _has_opentsne() else []) + ([] if args.skip_sklearn
                                                          else ["sklearn"])
    coords = None
    for m in methods:
        # pca_dims=50 on already-50-d input: embed() runs t-SNE only
        (c, used), dt = timed(m, lambda: embed(pca, pca_dims=50, method=m, seed=0,
                                              n_jobs=threads))
        times[m] = dt
        coords = c if coords is None else coords
        print(f"t-SNE {used:9s}:         {dt:7.1f} s   nearest neighbour same cluster: "
              f"{neighbour_agreement(c, label):.3f}")
    if len(times) == 2:
        print(f"openTSNE vs scikit-learn: {times['sklearn'] / times['opentsne']:.2f}x faster")
    if not _has_opentsne():
        print("(openTSNE not installed: pip install openTSNE for the faster path)")
    cols, rows = grid_shape(args.n)
    _, t_greedy = timed("greedy", lambda: snap_to_grid(coords, cols, rows, exact_max=0))
    print(f"grid snap, greedy:       {t_greedy:7.2f} s  ({cols} x {rows} cells)")
    sub = min(args.n, 2000)
    cs, rs_ = grid_shape(sub)
    _, t_exact = timed("exact", lambda: snap_to_grid(coords[:sub], cs, rs_, exact_max=sub))
    _, t_greedy_sub = timed("greedy", lambda: snap_to_grid(coords[:sub], cs, rs_, exact_max=0))
    print(f"grid snap, {sub} points: exact {t_exact:.2f} s vs greedy {t_greedy_sub:.2f} s "
          f"({t_exact / max(t_greedy_sub, 1e-9):.1f}x)")
    total = t_pca + min(times.values()) if times else t_pca
    print(f"total (PCA + fastest t-SNE): {total:.1f} s")


if __name__ == "__main__":
    main()
