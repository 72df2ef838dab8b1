"""Pure TF primitives on the clients of a round, one row (or one entry) per client.

The gathering defenses hold the n client updates as row blocks
(`blockwise_ops`); what they compute from them is per client ([n]) or per
pair of clients ([n, n]): which clients to keep, distances from the Gram
matrix, a median. `flatten_rows` and `unflatten_vector` convert between a
model's tensors and the flat rows the defenses see.
"""

from typing import Sequence

import numpy as np
import tensorflow as tf


def true_indices(mask: tf.Tensor) -> tf.Tensor:
  """int32 [m]: the positions where the bool [n] `mask` is True, in order."""
  return tf.cast(tf.where(mask)[:, 0], tf.int32)


def submatrix(matrix: tf.Tensor, index: tf.Tensor) -> tf.Tensor:
  """[m, m]: the rows and columns `index` of an [n, n] matrix."""
  return tf.gather(tf.gather(matrix, index), index, axis=1)


def scatter_to_clients(values: tf.Tensor, index: tf.Tensor, n: tf.Tensor, fill=0) -> tf.Tensor:
  """[n]: values[j] at position index[j] (the m clients scored), `fill` at the others."""
  filled = tf.fill([n], tf.cast(fill, values.dtype))
  return tf.tensor_scatter_nd_update(filled, index[:, tf.newaxis], values)


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
  cosine = tf.math.divide_no_nan(gram, norms[:, tf.newaxis] * norms[tf.newaxis, :])
  distances = tf.clip_by_value(1.0 - cosine, 0.0, 2.0)
  distances = 0.5 * (distances + tf.transpose(distances))
  return tf.linalg.set_diag(distances, tf.zeros_like(norms))


def median(values: tf.Tensor) -> tf.Tensor:
  """Median along axis 0 (per coordinate for [n, d]); the mean of the two middle
  values when n is even, as NumPy."""
  sorted_values = tf.sort(values, axis=0)
  n = tf.shape(values)[0]
  lower = tf.gather(sorted_values, (n - 1) // 2)
  upper = tf.gather(sorted_values, n // 2)
  return (lower + upper) / 2.0


def flatten_rows(leaves: Sequence[tf.Tensor]) -> tf.Tensor:
  """[n, d] float32 matrix from stacked [n, ...] tensors (one per model variable)."""
  n = tf.shape(leaves[0])[0]
  return tf.concat([tf.reshape(tf.cast(x, tf.float32), [n, -1]) for x in leaves], axis=1)


def unflatten_vector(vector: tf.Tensor, specs: Sequence[tuple]) -> list:
  """Splits a [d] vector into tensors of the given (shape, dtype) specs."""
  sizes = [int(np.prod(shape)) for shape, _ in specs]
  parts = tf.split(vector, sizes) if len(sizes) > 1 else [vector]
  return [tf.cast(tf.reshape(p, shape), dtype) for p, (shape, dtype) in zip(parts, specs)]
