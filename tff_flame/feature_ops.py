"""Per-row features of client updates held as G row blocks, for FreqFed and Multi-Metrics.

Like `blockwise_ops`, these pure TF functions take the gathered blocks (tensors
[m_g, d] or `grouped_gather` blocks with an `order`) and return results in the
blocks' canonical row order, without an [n, d] temporary:

* `map_rows` applies a row-wise function to a few rows at a time (a chunk
  of at most `chunk_rows` rows, copied out of its block in canonical order);
* `low_frequency_dct` / `low_frequency_features`: FreqFed's low-frequency
  DCT-II coefficients of each update, [n, k] with k about d / 8;
* `manhattan_distance_sums`: sum_j ||x_i - x_j||_1 over the kept rows, for
  Multi-Metrics, one column slice [n, w] at a time, by sorting each column
  (O(n log n) per column instead of the n^2 pairwise differences).
"""

import math
from typing import Callable, Optional, Sequence

import tensorflow as tf

_ROWS = 'rows'  # grouped_gather.ROWS and ORDER, without importing TFF here.
_ORDER = 'order'

# Rows per chunk in `map_rows` (FreqFed's DCT holds a few copies of them: 6.7 MB each for the CNN).
CHUNK_ROWS = 4
# Columns per slice in `manhattan_distance_sums`: [w, n] float64 temporaries of 3 MB at n = 100.
COLUMN_SLICE = 4096


def _rows_and_order(block):
  """(rows [m, d], canonical order [m] int32) of a tensor or a gathered block."""
  if isinstance(block, dict):
    rows = tf.convert_to_tensor(block[_ROWS])
    order = block.get(_ORDER)
    if order is not None:
      return rows, tf.cast(order, tf.int32)
  else:
    rows = tf.convert_to_tensor(block)
  return rows, tf.range(tf.shape(rows)[0])


def static_dim(blocks) -> int:
  """d, the rows' static width (the transforms here are built for one d)."""
  dim = _rows_and_order(blocks[0])[0].shape[1]
  if dim is None:
    raise ValueError('the rows need a static width d.')
  return int(dim)


def _chunks(sizes: tf.Tensor, chunk_rows: int):
  """(block, start) int32 [K] of the K chunks: chunk k is positions [start_k, start_k +
  chunk_rows) of block block_k (clipped to its size), blocks in order, empty blocks skipped."""
  chunks_per_block = (sizes + chunk_rows - 1) // chunk_rows
  block = tf.repeat(tf.range(tf.shape(sizes)[0]), chunks_per_block)
  first_chunk = tf.gather(tf.cumsum(chunks_per_block, exclusive=True), block)
  return block, (tf.range(tf.shape(block)[0]) - first_chunk) * chunk_rows


def map_rows(blocks, fn: Callable, dtype, row_shape: Sequence[int],
             chunk_rows: int = CHUNK_ROWS) -> tf.Tensor:
  """fn(rows [c, d], index [c]) -> [c, *row_shape] on chunks of c <= chunk_rows rows,
  concatenated: [n, *row_shape] (row_shape static).

  `index` holds the chunk's canonical row numbers and `rows` those rows (a
  copy of c rows, read through the block's order), so the result is in
  canonical order. One `tf.while_loop` over all chunks: the graph has one
  copy of `fn` however many blocks there are.
  """
  pairs = [_rows_and_order(b) for b in blocks]
  sizes = tf.stack([tf.shape(r)[0] for r, _ in pairs])
  offsets = tf.concat([[0], tf.cumsum(sizes)], axis=0)
  rows_array = tf.TensorArray(pairs[0][0].dtype, size=len(pairs), infer_shape=False,
                              clear_after_read=False, element_shape=tf.TensorShape([None, None]))
  orders_array = tf.TensorArray(tf.int32, size=len(pairs), infer_shape=False,
                                clear_after_read=False, element_shape=tf.TensorShape([None]))
  for g, (rows, order) in enumerate(pairs):
    rows_array = rows_array.write(g, rows)
    orders_array = orders_array.write(g, order)
  chunk_block, chunk_start = _chunks(sizes, chunk_rows)
  num_chunks = tf.shape(chunk_block)[0]
  dim = tf.shape(pairs[0][0])[1]

  def body(k, out):
    g = chunk_block[k]
    size = sizes[g]
    rows = tf.reshape(rows_array.read(g), [size, dim])
    order = tf.reshape(orders_array.read(g), [size])
    start = chunk_start[k]
    stop = tf.minimum(start + chunk_rows, size)
    chunk = tf.gather(rows, order[start:stop])
    chunk.set_shape([None, pairs[0][0].shape[1]])
    return k + 1, out.write(k, fn(chunk, offsets[g] + tf.range(start, stop)))

  row_shape = [int(s) for s in row_shape]
  out = tf.TensorArray(dtype, size=num_chunks, infer_shape=False,
                       element_shape=tf.TensorShape([None] + row_shape))
  _, out = tf.while_loop(lambda k, _: k < num_chunks, body, (tf.constant(0), out),
                         parallel_iterations=1)
  return tf.cond(num_chunks > 0, out.concat, lambda: tf.zeros([0] + row_shape, dtype))


def dct_side(dim: int) -> int:
  """P = ceil(sqrt(d)): an update of d floats is read as a P x P matrix (zero-padded)."""
  if dim < 1:
    raise ValueError(f'dim must be >= 1, got {dim}.')
  side = math.isqrt(dim)
  return side if side * side == dim else side + 1


def num_low_frequencies(dim: int) -> int:
  """k = (h + 1)(h + 2) / 2 with h = floor(P / 2): the coefficients (u, v) with u + v <= h."""
  h = dct_side(dim) // 2
  return (h + 1) * (h + 2) // 2


def dct_basis(size: int, count: int) -> tf.Tensor:
  """float32 [count, size]: the first `count` rows of the orthonormal DCT-II matrix.

  C[f, t] = s_f cos(pi (2 t + 1) f / (2 size)), s_0 = sqrt(1 / size), else
  sqrt(2 / size) (scipy's `dct(type=2, norm='ortho')`), built in float64.
  """
  f = tf.range(count, dtype=tf.float64)[:, tf.newaxis]
  t = tf.range(size, dtype=tf.float64)[tf.newaxis, :]
  basis = tf.cos(math.pi * (2.0 * t + 1.0) * f / (2.0 * size))
  scale = tf.where(tf.equal(f, 0.0), tf.constant(math.sqrt(1.0 / size), tf.float64),
                   tf.constant(math.sqrt(2.0 / size), tf.float64))
  return tf.cast(basis * scale, tf.float32)


def _triangle_index(h: int) -> tf.Tensor:
  """int32 [k]: flat indices (u * (h + 1) + v) of the (u, v) with u + v <= h, row-major."""
  u = tf.range(h + 1)[:, tf.newaxis]
  v = tf.range(h + 1)[tf.newaxis, :]
  return tf.cast(tf.where(tf.reshape(u + v <= h, [-1]))[:, 0], tf.int32)


def low_frequency_dct(rows: tf.Tensor, basis: Optional[tf.Tensor] = None) -> tf.Tensor:
  """float32 [m, k]: FreqFed's low-frequency DCT coefficients of each row.

  Each row of d floats is zero-padded to P * P (P = `dct_side(d)`) and read
  as a P x P matrix X (row-major); V = C X C^T is its orthonormal 2-D DCT-II
  (scipy's `dctn(X, type=2, norm='ortho')`), and the features are V[u, v]
  with u + v <= floor(P / 2), row-major in (u, v): the top-left triangle
  where the low frequencies lie. Only the first h + 1 DCT rows are
  multiplied (two matmuls, m * P^2 * (h + 1) multiply-adds for the first).
  Rows are float32; scale them to moderate magnitudes first (the matmuls
  are float32). `basis`: `dct_basis(P, h + 1)`, to build it once for many calls.
  """
  rows = tf.convert_to_tensor(rows, tf.float32)
  dim = rows.shape[1]
  if dim is None:
    raise ValueError('the rows need a static width d.')
  side = dct_side(int(dim))
  h = side // 2
  basis = dct_basis(side, h + 1) if basis is None else basis  # [h + 1, P]
  m = tf.shape(rows)[0]
  padded = tf.pad(rows, [[0, 0], [0, side * side - int(dim)]])
  # X C^T for all rows at once, then C (X C^T): V[u, v] = sum_pq C[u, p] X[p, q] C[v, q].
  right = tf.matmul(tf.reshape(padded, [m * side, side]), basis, transpose_b=True)
  coefficients = tf.matmul(basis, tf.reshape(right, [m, side, h + 1]))  # [m, h + 1, h + 1]
  return tf.gather(tf.reshape(coefficients, [m, (h + 1) * (h + 1)]), _triangle_index(h), axis=1)


def unit_scale_factors(norms: tf.Tensor, usable: tf.Tensor) -> tf.Tensor:
  """float32 [n, 2]: two factors a, b with x * a * b = x / ||x|| (0 for unusable or zero rows).

  1 / ||x|| can be below float32's smallest normal number (||x|| up to
  3.4e38), which TF's CPU kernels flush to zero; its square root, applied
  twice, stays normal.
  """
  norms = tf.cast(norms, tf.float64)
  usable = tf.cast(usable, tf.bool) & (norms > 0.0)
  root = tf.where(usable, tf.math.rsqrt(tf.where(usable, norms, 1.0)), 0.0)
  root = tf.cast(root, tf.float32)
  return tf.stack([root, root], axis=1)


def low_frequency_features(blocks, factors: tf.Tensor,
                           chunk_rows: int = CHUNK_ROWS) -> tf.Tensor:
  """float32 [n, k]: `low_frequency_dct` of each row times its two `factors` ([n, 2]).

  Rows whose factors are 0 (e.g. with NaN or Inf) give zero features. With
  `unit_scale_factors` every row is scaled to norm 1 before the DCT, so no
  coefficient can overflow (the orthonormal DCT keeps the norm); the true
  coefficients are the features divided by a * b.
  """
  factors = tf.cast(factors, tf.float32)
  side = dct_side(static_dim(blocks))
  basis = dct_basis(side, side // 2 + 1)  # once, outside the loop over chunks

  def features(rows, index):
    scale = tf.gather(factors, index)
    scaled = rows * scale[:, :1] * scale[:, 1:]
    keep = tf.reduce_all(tf.not_equal(scale, 0.0), axis=1)
    scaled = tf.where(keep[:, tf.newaxis], scaled, tf.zeros_like(scaled))  # NaN * 0 is NaN
    return low_frequency_dct(scaled, basis)

  return map_rows(blocks, features, tf.float32, [num_low_frequencies(static_dim(blocks))],
                  chunk_rows)


def _column_sums_of_abs_differences(columns: tf.Tensor) -> tf.Tensor:
  """float64 [m]: sum over columns c and rows j of |x[i, c] - x[j, c]|, for x = columns [m, w].

  Per column, with the values sorted (s_0 <= ... <= s_{m-1}, prefix sums
  S_r = s_0 + ... + s_{r-1}, total T), the value at rank r has
  sum_j |s_r - s_j| = s_r (2 r - m) + T - 2 S_r; ties give the same sum in
  any order. The sort is on the float32 values (`top_k` of their negation,
  exact; a third faster than sorting float64), the sums in float64.
  """
  values = tf.transpose(columns)  # [w, m]
  m = tf.shape(values)[1]
  negated, rank = tf.math.top_k(-values, k=m, sorted=True)
  ordered = -tf.cast(negated, tf.float64)
  prefix = tf.cumsum(ordered, axis=1, exclusive=True)
  total = tf.reduce_sum(ordered, axis=1, keepdims=True)
  weight = 2.0 * tf.cast(tf.range(m), tf.float64) - tf.cast(m, tf.float64)
  sums = ordered * weight + total - 2.0 * prefix
  return tf.math.unsorted_segment_sum(tf.reshape(sums, [-1]), tf.reshape(rank, [-1]), m)


def manhattan_distance_sums(blocks, keep: Optional[tf.Tensor] = None,
                            column_slice: int = COLUMN_SLICE) -> tf.Tensor:
  """float64 [n]: sum over kept rows j of ||x_i - x_j||_1 for each kept row i; 0 elsewhere.

  One pass over column slices: the slices of all blocks are stacked into
  [n, w] (stored order), the kept rows taken, and each column's contribution
  found by sorting it (`_column_sums_of_abs_differences`), summed in float64:
  a difference of two float32 values near 3.4e38 would overflow float32, and
  float64 holds any sum of d such terms. The rows must be float32. Rows with NaN or Inf must not be
  kept (their sums would be NaN, and so would every other row's).
  """
  pairs = [_rows_and_order(b) for b in blocks]
  rows = [r for r, _ in pairs]
  sizes = [tf.shape(r)[0] for r in rows]
  offsets = tf.concat([[0], tf.cumsum(tf.stack(sizes))], axis=0)
  # perm[i]: the stored position of the i-th row in canonical order.
  perm = tf.concat([offsets[g] + order for g, (_, order) in enumerate(pairs)], axis=0)
  n = offsets[-1]
  keep = tf.ones([n], tf.bool) if keep is None else tf.cast(keep, tf.bool)
  stored_keep = tf.scatter_nd(perm[:, tf.newaxis], keep, [n])
  kept = tf.cast(tf.where(stored_keep)[:, 0], tf.int32)  # stored positions of kept rows
  dim = tf.shape(rows[0])[1]

  def body(start, sums):
    piece = tf.concat([r[:, start:start + column_slice] for r in rows], axis=0)
    return start + column_slice, sums + _column_sums_of_abs_differences(tf.gather(piece, kept))

  _, sums = tf.while_loop(lambda start, _: start < dim, body,
                          (tf.constant(0), tf.zeros([tf.shape(kept)[0]], tf.float64)),
                          parallel_iterations=1)
  stored = tf.scatter_nd(kept[:, tf.newaxis], sums, [n])
  return tf.gather(stored, perm)
