"""Pure TF primitives on client values stacked into rows, shared by every gathering defense.

A gathering defense sees the n client updates as one [n, d] matrix (one row per
client, flattened over the whole model). FLAME and the robust baselines need
the same pieces: which rows are finite, row norms, pairwise distances, a
median along the rows and per-row clipping.
"""

from typing import Sequence

import numpy as np
import tensorflow as tf


def finite_rows(x: tf.Tensor) -> tf.Tensor:
  """bool [n]: rows without NaN or Inf."""
  return tf.reduce_all(tf.math.is_finite(x), axis=1)


def finite_subset(x: tf.Tensor):
  """(finite [n] bool, index [m] int32 of the finite rows, those rows [m, d])."""
  finite = finite_rows(x)
  index = tf.cast(tf.where(finite)[:, 0], tf.int32)
  return finite, index, tf.gather(x, index)


def l2_norms(x: tf.Tensor) -> tf.Tensor:
  """L2 norm of each row, in float64."""
  x = tf.cast(x, tf.float64)
  return tf.sqrt(tf.reduce_sum(tf.square(x), axis=1))


def cosine_distances(x: tf.Tensor) -> tf.Tensor:
  """[n, n] float64 matrix of 1 - cos(x_i, x_j), with a zero diagonal.

  The Gram matrix is computed in the input's dtype (float32 for model
  updates, to keep an [n, d] float64 copy out of memory); see
  `cosine_distances_from_gram`.
  """
  return cosine_distances_from_gram(tf.matmul(x, x, transpose_b=True))


def norms_from_gram(gram: tf.Tensor) -> tf.Tensor:
  """float64 [n]: sqrt of the Gram diagonal."""
  return tf.sqrt(tf.maximum(tf.linalg.diag_part(gram), 0.0))


def cosine_distances_from_gram(gram: tf.Tensor) -> tf.Tensor:
  """float64 [n, n] matrix of 1 - cos(x_i, x_j) from the Gram matrix, with a zero diagonal.

  A zero row has no direction: its distance to every other row is 1.
  Distances are clipped to [0, 2] and made symmetric; normalising by
  sqrt(g_ii) * sqrt(g_jj) keeps the products in range.
  """
  gram = tf.cast(gram, tf.float64)
  norms = norms_from_gram(gram)
  denom = norms[:, tf.newaxis] * norms[tf.newaxis, :]
  cosine = tf.where(denom > 0.0, gram / tf.where(denom > 0.0, denom, 1.0), 0.0)
  distances = tf.clip_by_value(1.0 - cosine, 0.0, 2.0)
  distances = 0.5 * (distances + tf.transpose(distances))
  return tf.linalg.set_diag(distances, tf.zeros_like(norms))


def squared_distances(x: tf.Tensor) -> tf.Tensor:
  """[n, n] float64 squared L2 distances between rows."""
  x = tf.cast(x, tf.float64)
  sq = tf.reduce_sum(tf.square(x), axis=1)
  d = sq[:, tf.newaxis] + sq[tf.newaxis, :] - 2.0 * tf.matmul(x, x, transpose_b=True)
  return tf.linalg.set_diag(tf.maximum(d, 0.0), tf.zeros_like(sq))


def median(values: tf.Tensor) -> tf.Tensor:
  """Median along axis 0 (per coordinate for [n, d]); the mean of the two middle
  values when n is even, as NumPy."""
  sorted_values = tf.sort(values, axis=0)
  n = tf.shape(values)[0]
  lower = tf.gather(sorted_values, (n - 1) // 2)
  upper = tf.gather(sorted_values, n // 2)
  return (lower + upper) / 2.0


def clip_rows(x: tf.Tensor, norms: tf.Tensor, bound: tf.Tensor) -> tf.Tensor:
  """Scales each row by min(1, bound / norm)."""
  scale = tf.where(norms > bound, bound / tf.where(norms > 0.0, norms, 1.0), 1.0)
  return x * tf.cast(scale, x.dtype)[:, tf.newaxis]


def flatten_rows(leaves: Sequence[tf.Tensor]) -> tf.Tensor:
  """[n, d] float32 matrix from stacked [n, ...] tensors (one per model variable)."""
  n = tf.shape(leaves[0])[0]
  return tf.concat([tf.reshape(tf.cast(x, tf.float32), [n, -1]) for x in leaves], axis=1)


def unflatten_vector(vector: tf.Tensor, specs: Sequence[tuple]) -> list:
  """Splits a [d] vector into tensors of the given (shape, dtype) specs."""
  sizes = [int(np.prod(shape)) for shape, _ in specs]
  parts = tf.split(vector, sizes) if len(sizes) > 1 else [vector]
  return [tf.cast(tf.reshape(p, shape), dtype) for p, (shape, dtype) in zip(parts, specs)]

