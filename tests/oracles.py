"""Test oracles: the `hdbscan` package's labels, and NumPy (+ `hdbscan`, scipy) rounds of FLAME,
FreqFed and Multi-Metrics; and the synthetic rounds the newer defenses are compared on."""

import math

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


FLOAT32_MAX = float(np.finfo(np.float32).max)


def as_gathered_blocks(rows, seed, sizes=None):
  """[n, d] rows as the gather delivers them: blocks (5 of random sizes, some maybe empty, unless
  `sizes` are given), each block's rows stored shuffled with the `order` that reads them back in
  the given (canonical) order."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(seed)
  if sizes is None:
    cuts = np.sort(rng.integers(0, len(rows) + 1, size=4))
    sizes = np.diff(np.concatenate([[0], cuts, [len(rows)]])).tolist()
  blocks, start = [], 0
  for size in sizes:
    canonical = rows[start:start + size]
    stored_at = rng.permutation(size)  # canonical row r is stored at position stored_at[r]
    stored = np.empty_like(canonical)
    stored[stored_at] = canonical
    blocks.append(dict(rows=tf.constant(stored), order=tf.constant(stored_at.astype(np.int32))))
    start += size
  assert start == len(rows), (start, len(rows))
  return blocks


def synthetic_round(n, seed, dim, attackers):
  """float32 [n, dim]: benign updates around one direction, the last n // 3 from
  attackers(direction, count, rng); a duplicate benign row (n >= 3), NaN and Inf rows and a
  duplicate attacker (n >= 10), a -Inf row and a zero row (n >= 40)."""
  rng = np.random.default_rng(seed)
  direction = rng.normal(size=dim)
  num_bad = n // 3
  rows = np.concatenate([direction + 0.5 * rng.normal(size=(n - num_bad, dim)),
                         attackers(direction, num_bad, rng)]).astype(np.float32)
  if n >= 3:
    rows[1] = rows[0]
  if n >= 10:
    rows[2, 3] = np.nan
    rows[n - 1] = np.inf
    rows[n - 2] = rows[n - 3]
  if n >= 40:
    rows[5] = -np.inf
    rows[6] = 0.0
  return rows


def with_huge_clients(benign):
  """The benign rows, then 6 bad ones: all 1e19, all -1e25, all 3e38 (a norm beyond float32),
  one entry 3e38 (a finite norm), a NaN, an Inf. Returns (rows, number of non-finite rows)."""
  huge = np.zeros((6, benign.shape[1]), np.float32)
  huge[0] = 1e19
  huge[1] = -1e25
  huge[2] = 3e38
  huge[3, 4 % benign.shape[1]] = 3e38
  huge[4, 0] = np.nan
  huge[5, 2 % benign.shape[1]] = np.inf
  return np.concatenate([benign.astype(np.float32), huge]), 3


def split_row(row, shapes) -> list:
  """A flat row as the arrays of a structured value with these shapes."""
  sizes = [int(np.prod(s)) for s in shapes]
  return [p.reshape(s) for p, s in zip(np.split(row, np.cumsum(sizes)[:-1]), shapes)]


def flat_value(value) -> np.ndarray:
  return np.concatenate([np.ravel(v) for v in value])


def tff_round(factory, rows, shapes, global_model=None):
  """(flat result, measurements) of one `next` of a gathering factory's process on client
  values of these shapes (float32 leaves, a list): `create()`, or `create_gathered()` with
  the global model when the factory needs it."""
  import tensorflow_federated as tff  # pylint: disable=g-import-not-at-top
  value_type = tff.StructWithPythonType([tff.TensorType(np.float32, s) for s in shapes], list)
  values = [split_row(r, shapes) for r in rows]
  if factory.requires_global_model:
    process = factory.create_gathered(value_type)
    out = process.next(process.initialize(), values, split_row(global_model, shapes))
  else:
    process = factory.create(value_type)
    out = process.next(process.initialize(), values)
  return flat_value(out.result), out.measurements


def usable_rows(updates) -> np.ndarray:
  """Rows a defense considers: finite entries and an L2 norm (float64) float32 can hold."""
  x = np.asarray(updates, np.float64)
  finite = np.isfinite(x).all(axis=1)
  norms = np.linalg.norm(np.where(finite[:, None], x, 0.0), axis=1)
  return finite & (norms <= FLOAT32_MAX)


def cosine_distance_matrix(points) -> np.ndarray:
  """1 - cos between rows, clipped to [0, 2], zero diagonal; a zero row is at 1 from all."""
  p = np.asarray(points, np.float64)
  norms = np.linalg.norm(p, axis=1)
  unit = p / np.where(norms > 0, norms, 1.0)[:, None]
  d = np.clip(1.0 - unit @ unit.T, 0.0, 2.0)
  d = 0.5 * (d + d.T)
  np.fill_diagonal(d, 0.0)
  return d


def low_frequency_dct_numpy(row) -> np.ndarray:
  """FreqFed's features of one [d] row: scipy's orthonormal 2-D DCT-II of the row zero-padded
  to P x P (P = ceil(sqrt(d))), the coefficients (u, v) with u + v <= P // 2, row-major."""
  import scipy.fft  # pylint: disable=g-import-not-at-top
  row = np.asarray(row, np.float64)
  side = math.isqrt(row.size)
  side += side * side < row.size
  matrix = np.zeros(side * side)
  matrix[:row.size] = row
  coefficients = scipy.fft.dctn(matrix.reshape(side, side), type=2, norm='ortho')
  h = side // 2
  return np.array([coefficients[u, v] for u in range(h + 1) for v in range(h + 1) if u + v <= h])


def freqfed_round_numpy(updates, min_cluster_size=None, reference=None):
  """FreqFed over [n, d] updates: returns dict(aggregate, admitted, labels, distances).

  Low-frequency DCT features of the updates (or, with a reference, of the local
  models reference - update), cosine distances, the `hdbscan` package (min
  cluster size n // 2 + 1, min_samples 1), the mean of the largest cluster.
  """
  x = np.asarray(updates, np.float64)
  n = x.shape[0]
  mcs = n // 2 + 1 if min_cluster_size is None else min_cluster_size
  usable = usable_rows(x)
  idx = np.flatnonzero(usable)
  points = x[idx] if reference is None else np.asarray(reference, np.float64)[None] - x[idx]
  features = np.array([low_frequency_dct_numpy(p) for p in points])
  distances = cosine_distance_matrix(features) if len(idx) else np.zeros((0, 0))
  labels = -np.ones(n, np.int64)
  if n == 1:
    labels[idx] = 0
  elif len(idx) >= max(2, mcs):
    labels[idx] = hdbscan_labels_numpy(distances, mcs)
  admitted = np.zeros(n, bool)
  if (labels >= 0).any():
    largest = np.bincount(labels[labels >= 0]).argmax()
    admitted = labels == largest
  aggregate = x[admitted].mean(axis=0) if admitted.any() else np.zeros(x.shape[1])
  return dict(aggregate=aggregate, admitted=admitted, labels=labels, distances=distances,
              features=features)


def whitened_scores_numpy(vectors) -> np.ndarray:
  """sqrt(v^T Sigma^+ v) per row, Sigma = np.cov (ddof 1), the generalized inverse taken in the
  correlation basis (constant columns and eigenvalues <= 1e-9 left out); 0 for < 2 rows."""
  v = np.asarray(vectors, np.float64)
  if len(v) < 2:
    return np.zeros(len(v))
  covariance = np.atleast_2d(np.cov(v.T))
  std = np.sqrt(np.maximum(np.diag(covariance), 0.0))
  varies = std > 1e-12 * np.abs(v).max(axis=0)
  z = v[:, varies] / std[varies]
  correlation = covariance[np.ix_(varies, varies)] / np.outer(std[varies], std[varies])
  eigenvalues, eigenvectors = np.linalg.eigh(correlation)
  kept = eigenvalues > 1e-9
  projections = z @ eigenvectors[:, kept]
  return np.sqrt((projections ** 2 / eigenvalues[kept]).sum(axis=1))


def multi_metric_sums_numpy(updates, reference=None) -> np.ndarray:
  """[m, 3] per row: sum over the other rows of (1 - cos)^2, ||x_i - x_j||_1 and
  | ||x_i|| - ||x_j|| |; cosines and lengths of reference - x with a reference.
  Pairwise, directly."""
  x = np.asarray(updates, np.float64)
  points = x if reference is None else np.asarray(reference, np.float64)[None] - x
  cosine = (cosine_distance_matrix(points) ** 2).sum(axis=1)
  manhattan = np.abs(x[:, None, :] - x[None, :, :]).sum(axis=(1, 2))
  lengths = np.linalg.norm(points, axis=1)
  euclidean = np.abs(lengths[:, None] - lengths[None, :]).sum(axis=1)
  return np.stack([cosine, manhattan, euclidean], axis=1)


def multi_metrics_round_numpy(updates, fraction=0.3, reference=None):
  """Multi-Metrics over [n, d] updates: dict(aggregate, admitted, scores, sums).

  The usable rows' metric sums, whitened scores, the max(1, floor(fraction * m))
  lowest (stable order) averaged with equal weights.
  """
  x = np.asarray(updates, np.float64)
  n = x.shape[0]
  usable = usable_rows(x)
  idx = np.flatnonzero(usable)
  scores = np.full(n, np.nan)
  sums = np.full((n, 3), np.nan)
  admitted = np.zeros(n, bool)
  if len(idx):
    sums[idx] = multi_metric_sums_numpy(x[idx], reference)
    scores[idx] = whitened_scores_numpy(sums[idx])
    select = min(max(int(np.floor(fraction * len(idx))), 1), len(idx))
    admitted[idx[np.argsort(scores[idx], kind='stable')[:select]]] = True
  aggregate = x[admitted].mean(axis=0) if admitted.any() else np.zeros(x.shape[1])
  return dict(aggregate=aggregate, admitted=admitted, scores=scores, sums=sums)
