"""Test oracles, independent of the library: every defense's round in NumPy (float64), the
`hdbscan` package and scipy's DCT; and the synthetic rounds the newer defenses are compared on.

FLAME's, the hardened FLAME's, Krum's, the coordinate rounds' and FoolsGold's
`*_round_numpy` return (aggregate [d] float64, measurements dict) with the
library's measurement keys, so a test compares every key; FreqFed's and
Multi-Metrics' return a dict of the aggregate, `admitted` and their
intermediate values (features, distances, scores, metric sums). A client counts
(is "usable") when its entries are finite and float32 can hold its L2 norm,
the library's rule (README, "Edge cases"); the others are never admitted.
"""

import math

import hdbscan
import numpy as np
import tensorflow as tf

FLOAT32_MAX = float(np.finfo(np.float32).max)


def hdbscan_labels_numpy(distances: np.ndarray, min_cluster_size: int,
                         min_samples: int = 1) -> np.ndarray:
  """The `hdbscan` package's labels for a precomputed distance matrix (the reference)."""
  distances = np.asarray(distances, np.float64)
  if distances.shape[0] < 2:
    return -np.ones(distances.shape[0], np.int32)
  clusterer = hdbscan.HDBSCAN(metric='precomputed', min_cluster_size=int(min_cluster_size),
                              min_samples=int(min_samples), allow_single_cluster=True)
  return clusterer.fit(distances).labels_.astype(np.int32)


def hdbscan_labels_py_function(distances, min_cluster_size, min_samples=1) -> tf.Tensor:
  """`hdbscan_labels_numpy` as a TF op through `tf.py_function`.

  Only for TF running in the Python process (eager code, a `tf.function`
  called directly); TFF's C++ worker cannot run it.
  """
  def call(d, m, s):
    return hdbscan_labels_numpy(d.numpy(), int(m.numpy()), int(s.numpy()))
  labels = tf.py_function(call, [tf.cast(tf.convert_to_tensor(distances), tf.float64),
                                 min_cluster_size, min_samples], tf.int32)
  labels.set_shape([None])
  return labels


def usable_rows(updates) -> np.ndarray:
  """bool [n]: rows with finite entries whose L2 norm (float64) is at most float32's max."""
  x = np.asarray(updates, np.float64)
  finite = np.isfinite(x).all(axis=1)
  norms = np.linalg.norm(np.where(finite[:, None], x, 0.0), axis=1)
  return finite & (norms <= FLOAT32_MAX)


def cosine_distances_numpy(points) -> np.ndarray:
  """1 - cos between rows via unit vectors; a zero row has distance 1 to every other row."""
  p = np.asarray(points, np.float64)
  norms = np.linalg.norm(p, axis=1, keepdims=True)
  unit = p / np.where(norms > 0, norms, 1.0)
  d = np.clip(1.0 - unit @ unit.T, 0.0, 2.0)
  d = 0.5 * (d + d.T)
  np.fill_diagonal(d, 0.0)
  return d


def euclidean_distances_numpy(points) -> np.ndarray:
  """Pairwise L2 distances from the differences directly, not through a Gram matrix."""
  p = np.asarray(points, np.float64)
  return np.linalg.norm(p[:, None, :] - p[None, :, :], axis=2)


def _measurements(usable, admitted, **own):
  """The measurements every defense reports, then the defense's own."""
  return dict(num_clients=len(usable), num_admitted=int(admitted.sum()),
              num_non_finite=int((~usable).sum()), admitted=admitted.astype(np.int32), **own)


def flame_round_numpy(updates, min_cluster_size=None, reference=None, distance=None,
                      noise_lambda=0.0, candidates=None):
  """FLAME's round without its noise: (aggregate, measurements).

  reference: the global model G to cluster the models G - delta_i; None
  clusters the updates. distance: 'cosine' or 'euclidean'; None = cosine with
  a reference (models), Euclidean without (updates), as FLAME's defaults.
  candidates: bool [n], the clients that may be clustered (default all);
  the default min cluster size is then half of the usable candidates + 1,
  while S_t stays the median over all usable clients.
  Measurements as `flame.flame_measurements`; `noise_stddev` is
  noise_lambda * S_t (0 on fallback); `cluster_labels` are the package's ids.
  """
  distance = distance or ('euclidean' if reference is None else 'cosine')
  updates = np.asarray(updates, np.float64)
  n = updates.shape[0]
  usable = usable_rows(updates)
  eligible = usable if candidates is None else usable & np.asarray(candidates, bool)
  mcs = (n if candidates is None else int(eligible.sum())) // 2 + 1
  mcs = mcs if min_cluster_size is None else min_cluster_size
  idx = np.flatnonzero(eligible)
  safe = np.where(usable[:, None], updates, 0.0)
  points = safe if reference is None else np.asarray(reference, np.float64)[None] - safe
  labels = -np.ones(n, np.int32)
  if n == 1:
    labels[eligible] = 0
  elif len(idx) >= max(2, mcs):
    distances = (cosine_distances_numpy if distance == 'cosine' else
                 euclidean_distances_numpy)(points[idx])
    labels[idx] = hdbscan_labels_numpy(distances, mcs, 1)
  admitted = np.zeros(n, bool)
  if (labels >= 0).any():
    admitted = labels == np.bincount(labels[labels >= 0]).argmax()
  norms = np.linalg.norm(safe, axis=1)
  bound = float(np.median(norms[usable])) if usable.any() else 0.0
  fallback = not admitted.any()
  if fallback:
    aggregate = np.zeros(updates.shape[1])
  else:
    scale = np.minimum(1.0, bound / np.where(norms > 0, norms, 1.0))
    aggregate = (safe[admitted] * scale[admitted, None]).mean(axis=0)
  return aggregate, _measurements(
      usable, admitted, cluster_labels=labels, update_norms=norms, clipping_bound=bound,
      noise_stddev=0.0 if fallback else noise_lambda * bound, fallback=int(fallback))


def alike_numpy(updates, alike_threshold=2.0, alike_group=3) -> tuple:
  """(alike bool [n], tau): usable clients with >= alike_group - 1 usable others whose update
  cosine similarity exceeds tau = median + threshold x 1.4826 x MAD over the usable pairs."""
  updates = np.asarray(updates, np.float64)
  usable = usable_rows(updates)
  idx = np.flatnonzero(usable)
  alike = np.zeros(len(updates), bool)
  if len(idx) < 2:
    return alike, float('inf')
  similarity = 1.0 - cosine_distances_numpy(updates[idx])
  pairs = similarity[np.triu_indices(len(idx), 1)]
  median = np.median(pairs)
  tau = median + alike_threshold * 1.4826 * np.median(np.abs(pairs - median))
  above = similarity > tau
  np.fill_diagonal(above, False)
  alike[idx] = above.sum(axis=1) >= alike_group - 1
  return alike, float(tau)


def hardened_round_numpy(updates, reference=None, alike_threshold=2.0, alike_group=3,
                         noise_lambda=0.0):
  """The hardened FLAME's round without noise: FLAME on the clients that are not alike."""
  alike, tau = alike_numpy(updates, alike_threshold, alike_group)
  aggregate, measurements = flame_round_numpy(updates, reference=reference,
                                              noise_lambda=noise_lambda, candidates=~alike)
  measurements.update(alike=alike.astype(np.int32), num_alike=int(alike.sum()),
                      alike_similarity=tau)
  return aggregate, measurements


def krum_round_numpy(updates, num_byzantine, num_selected=1):
  """Krum (num_selected=1) or Multi-Krum (None: m - f) over the m usable updates.

  Score: the sum of the squared distances to the k = m - f - 2 nearest other
  usable rows, k clamped to [1, max(m - 1, 1)] (a lone client has no
  neighbour: score inf); the lowest scores win, the lower index on a tie.
  """
  x = np.asarray(updates, np.float64)
  n = len(x)
  usable = usable_rows(x)
  idx = np.flatnonzero(usable)
  rows = x[idx]
  m = len(rows)
  d = ((rows[:, None] - rows[None]) ** 2).sum(-1)
  wanted = m - num_byzantine - 2
  k = min(max(wanted, 1), max(m - 1, 1))
  scores = np.array([np.sort(np.delete(d[i], i))[:k].sum() if m > k else np.inf
                     for i in range(m)])
  select = max(m - num_byzantine, 1) if num_selected is None else num_selected
  chosen = np.argsort(scores, kind='stable')[:min(select, m)]
  admitted = np.zeros(n, bool)
  admitted[idx[chosen]] = True
  all_scores = np.full(n, np.nan)
  all_scores[idx] = scores
  aggregate = rows[chosen].mean(axis=0) if m else np.zeros(x.shape[1])
  return aggregate, _measurements(usable, admitted, scores=all_scores, neighbours=k,
                                  assumption_holds=int(wanted >= 1))


def median_numpy(rows):
  return np.median(rows, axis=0)


def trimmed_mean_numpy(rows, trim_fraction):
  """Per coordinate: the mean after dropping the floor(beta * n) largest and smallest values."""
  n = len(rows)
  cut = int(np.floor(trim_fraction * n))
  return np.sort(rows, axis=0)[cut:n - cut].mean(axis=0)


def coordinate_round_numpy(updates, statistic):
  """`statistic` ([m, d] -> [d]) over the usable updates (0 if none); they are all admitted."""
  x = np.asarray(updates, np.float64)
  usable = usable_rows(x)
  aggregate = statistic(x[usable]) if usable.any() else np.zeros(x.shape[1])
  return aggregate, _measurements(usable, usable)


def foolsgold_weights_numpy(history, kappa=1.0):
  """FoolsGold's weights as in the authors' NumPy code (loops and all); all 0 when every
  alpha is 0 (where their code divides by zero)."""
  x = np.asarray(history, np.float64)
  n = len(x)
  norms = np.linalg.norm(x, axis=1)
  cs = np.zeros((n, n))
  for i in range(n):
    for j in range(n):
      if i != j and norms[i] > 0 and norms[j] > 0:
        cs[i, j] = x[i] @ x[j] / (norms[i] * norms[j])
  maxcs = cs.max(axis=1) + 1e-5
  for i in range(n):
    for j in range(n):
      if i != j and maxcs[i] < maxcs[j]:
        cs[i][j] = cs[i][j] * maxcs[i] / maxcs[j]
  wv = 1 - cs.max(axis=1)
  wv[wv > 1] = 1
  wv[wv < 0] = 0
  if wv.max() == 0:
    return np.zeros(n)
  wv = wv / wv.max()
  wv[wv == 1] = .99
  wv = kappa * (np.log(wv / (1 - wv) + 1e-5) + 0.5)
  wv[np.isinf(wv) | (wv > 1)] = 1
  wv[wv < 0] = 0
  return wv


def foolsgold_round_numpy(updates, history=None, kappa=1.0):
  """FoolsGold's weighted mean sum w_i u_i / sum w_i of the usable updates (0 if every weight
  is 0), weights from `history` (default: the updates); unusable clients get weight 0."""
  x = np.asarray(updates, np.float64)
  h = x if history is None else np.asarray(history, np.float64)
  usable = usable_rows(x) & usable_rows(h)
  weights = np.zeros(len(x))
  if usable.any():
    weights[usable] = foolsgold_weights_numpy(h[usable], kappa)
  total = weights.sum()
  safe = np.where(usable[:, None], x, 0.0)
  aggregate = weights @ safe / total if total > 0 else np.zeros(x.shape[1])
  return aggregate, _measurements(usable, weights > 0, weights=weights,
                                  fallback=int(total <= 0))

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
  distances = cosine_distances_numpy(features) if len(idx) else np.zeros((0, 0))
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
  cosine = (cosine_distances_numpy(points) ** 2).sum(axis=1)
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
