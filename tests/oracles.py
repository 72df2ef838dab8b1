"""Test oracles: the `hdbscan` package's labels and a NumPy + `hdbscan` FLAME round."""

import hdbscan
import numpy as np


def hdbscan_labels_numpy(distances: np.ndarray, min_cluster_size: int,
                         min_samples: int = 1) -> np.ndarray:
  """The `hdbscan` package's labels for a precomputed distance matrix (the reference)."""
  distances = np.asarray(distances, np.float64)
  if distances.shape[0] < 2:
    return -np.ones(distances.shape[0], np.int32)
  clusterer = hdbscan.HDBSCAN(metric='precomputed', min_cluster_size=int(min_cluster_size),
                              min_samples=int(min_samples), allow_single_cluster=True)
  return clusterer.fit(distances).labels_.astype(np.int32)


def flame_round_numpy(updates, min_cluster_size=None, reference=None, distance=None):
  """Returns (noiseless aggregate, admitted mask, S_t) for [n, d] updates.

  distance: 'cosine' or 'euclidean'; None = cosine with a reference (models),
  Euclidean without (updates), as FLAME's defaults.
  """
  distance = distance or ('euclidean' if reference is None else 'cosine')
  updates = np.asarray(updates, np.float64)
  n = updates.shape[0]
  mcs = n // 2 + 1 if min_cluster_size is None else min_cluster_size
  finite = np.isfinite(updates).all(axis=1)
  idx = np.flatnonzero(finite)
  points = updates if reference is None else np.asarray(reference, np.float64)[None] - updates
  admitted = np.zeros(n, bool)
  if n == 1:
    admitted[:] = finite
  elif len(idx) >= max(2, mcs):
    p = points[idx]
    if distance == 'cosine':
      unit = p / np.linalg.norm(p, axis=1, keepdims=True)
      d = np.clip(1.0 - unit @ unit.T, 0.0, 2.0)
      d = 0.5 * (d + d.T)
      np.fill_diagonal(d, 0.0)
    else:  # pairwise differences directly, not through a Gram matrix
      d = np.linalg.norm(p[:, None, :] - p[None, :, :], axis=2)
    labels = hdbscan.HDBSCAN(metric='precomputed', min_cluster_size=mcs, min_samples=1,
                             allow_single_cluster=True).fit(d).labels_
    if (labels >= 0).any():
      largest = np.bincount(labels[labels >= 0]).argmax()
      admitted[idx[labels == largest]] = True
  norms = np.linalg.norm(np.where(finite[:, None], updates, 0.0), axis=1)
  bound = float(np.median(norms[finite])) if finite.any() else 0.0
  if not admitted.any():
    return np.zeros(updates.shape[1]), admitted, bound
  scale = np.minimum(1.0, bound / np.maximum(norms, 1e-300))
  clipped = updates[admitted] * scale[admitted, None]
  return clipped.mean(axis=0), admitted, bound
