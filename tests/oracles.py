"""Test oracles, independent of the library: every defense's round in NumPy (float64) and the
`hdbscan` package.

Each `*_round_numpy` returns (aggregate [d] float64, measurements dict) with the
library's measurement keys, so a test compares every key. A client counts
(is "usable") when its entries are finite and float32 can hold its L2 norm,
the library's rule (README, "Edge cases"); the others are never admitted.
"""

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
