"""Server-side linear algebra on client updates held as G row blocks [m_g, d].

`grouped_gather` delivers the n client updates as G blocks (sum_g m_g = n).
These pure TF functions work on such a list of blocks without ever building a
second [n, d] temporary: a temporary holds at most one block, or one column
slice of all n rows, and results are [n], [n, n] or [d]. Only the
coordinate-wise path (`concat_rows`, then `coordinate_median` or
`trimmed_mean`) builds one [n, d] matrix, since sorting per coordinate needs
all rows; nothing there is quadratic in d.

Overflow safety. A finite float32 update can be as large as 3.4e38; its
squared norm (or a Gram entry) overflows float32 to inf, and distances built
from it become NaN. Here every row is first scaled by a power of two 2^-e_i
(exact, no rounding) so that its largest magnitude lies in (0.5, 1]; dot
products of scaled rows are at most d in magnitude, and the scale 2^(e_i+e_j)
is put back in float64, whose range (1.8e308) holds any product of two
float32 rows (at most 3.4e38^2 * d). Rows with NaN or Inf are set to zero in
the Gram matrix and have NaN norms; a row counts as finite only when all its
entries and its norm are finite. (TF's CPU kernels flush subnormal float32
values to zero, so a row of subnormals behaves as a zero row.)

Blocks may be tensors [m_g, d] or `grouped_gather` blocks (OrderedDicts with
a 'rows' entry). Row i of the result is row i of the blocks taken in order.
"""

from typing import Optional

import tensorflow as tf

_ROWS = 'rows'  # grouped_gather.ROWS and ORDER, without importing TFF here.
_ORDER = 'order'


def _rows_and_order(block):
  """(rows [m, d], order [m] or None) of a tensor or a gathered block."""
  if isinstance(block, dict):
    order = block.get(_ORDER)
    return tf.convert_to_tensor(block[_ROWS]), (None if order is None else
                                                tf.convert_to_tensor(order))
  return tf.convert_to_tensor(block), None


def rows_of(blocks) -> list:
  """The [m_g, d] row tensors of a list of blocks, in their canonical order.

  A gathered block with an `order` is read as rows[order]: a copy of the
  block, so use this only where a copy is meant (`concat_rows`); the other
  functions here apply `order` one block at a time.
  """
  out = []
  for b in blocks:
    rows, order = _rows_and_order(b)
    out.append(rows if order is None else tf.gather(rows, order))
  return out


def block_sizes(blocks) -> list:
  """int32 scalars m_g."""
  return [tf.shape(_rows_and_order(b)[0])[0] for b in blocks]


def num_rows(blocks) -> tf.Tensor:
  """n = sum_g m_g."""
  return tf.add_n(block_sizes(blocks)) if blocks else tf.constant(0)


class _Blocks:
  """The blocks in a TensorArray, with their sizes and row offsets, so that per-block work
  runs in a `tf.while_loop` (one iteration at a time): the graph stays the same size
  for any number of blocks (a TFF worker loads and optimises every graph it runs)."""

  def __init__(self, blocks):
    pairs = [_rows_and_order(b) for b in blocks]
    rows = [r for r, _ in pairs]
    self.count = len(rows)
    self.dtype = rows[0].dtype
    self.sizes = tf.stack([tf.shape(r)[0] for r in rows])
    self.offsets = tf.concat([[0], tf.cumsum(self.sizes)], axis=0)
    self.num_rows = self.offsets[-1]
    self.dim = tf.shape(rows[0])[1]
    array = tf.TensorArray(self.dtype, size=self.count, infer_shape=False,
                           clear_after_read=False, element_shape=tf.TensorShape([None, None]))
    orders = tf.TensorArray(tf.int32, size=self.count, infer_shape=False,
                            clear_after_read=False, element_shape=tf.TensorShape([None]))
    for g, (r, order) in enumerate(pairs):
      array = array.write(g, r)
      orders = orders.write(g, tf.range(tf.shape(r)[0]) if order is None else
                            tf.cast(order, tf.int32))
    self.array = array
    self.orders = orders

  def read_raw(self, g):
    """Block g's rows as stored (no copy)."""
    return tf.reshape(self.array.read(g), [self.sizes[g], self.dim])

  def order(self, g):
    return tf.reshape(self.orders.read(g), [self.sizes[g]])

  def read(self, g, index=None):
    """Block g's rows in canonical order, or its rows `index` (canonical positions): a copy."""
    order = self.order(g)
    return tf.gather(self.read_raw(g), order if index is None else tf.gather(order, index))

  def permutation(self):
    """int32 [n]: the stored position of the i-th row in canonical order."""
    parts = tf.TensorArray(tf.int32, size=self.count, infer_shape=False,
                           element_shape=tf.TensorShape([None]))

    def body(g, parts):
      return g + 1, parts.write(g, self.offsets[g] + self.order(g))

    _, parts = tf.while_loop(lambda g, _: g < self.count, body, (tf.constant(0), parts))
    return tf.reshape(parts.concat(), [self.num_rows])

  def map_raw_rows(self, fn, dtype):
    """fn(g, stored block g) per block ([m_g] or [m_g, k]), concatenated and put in
    canonical order (row-wise results do not depend on the order rows are stored in)."""
    out = tf.TensorArray(dtype, size=self.count, infer_shape=False)

    def body(g, out):
      return g + 1, out.write(g, fn(g, self.read_raw(g)))

    _, out = tf.while_loop(lambda g, _: g < self.count, body, (tf.constant(0), out),
                           parallel_iterations=1)
    return tf.gather(out.concat(), self.permutation())

  def rows_of(self, g):
    """(start, stop) of block g's rows."""
    return self.offsets[g], self.offsets[g + 1]


def _pow2(k: tf.Tensor) -> tf.Tensor:
  """Exactly 2^k in float32 for int32 k in [-126, 127] (built from its bits)."""
  return tf.bitcast(tf.bitwise.left_shift(k + 127, 23), tf.float32)


def _exponents(block: tf.Tensor, safe_range: bool = False):
  """(e int32 [m], finite bool [m]): 2^e is about the largest |entry| of each row.

  e = 0 for zero and non-finite rows (and with `safe_range`, for rows that
  need no scaling). Range: [-149, 129] for finite rows.
  """
  finite = tf.reduce_all(tf.math.is_finite(block), axis=1)
  max_abs = tf.cast(tf.reduce_max(tf.abs(block), axis=1), tf.float64)
  usable = finite & (max_abs > 0.0)
  if safe_range:
    # Rows with max |entry| in [2^-40, 2^40] need no scaling: their squares sum
    # to at most d * 2^80 (no overflow for d < 2^47) and stay normal.
    usable = usable & ((max_abs > 2.0**40) | (max_abs < 2.0**-40))
  log2 = tf.math.log(tf.where(usable, max_abs, 1.0)) / tf.math.log(tf.constant(2.0, tf.float64))
  e = tf.cast(tf.floor(log2), tf.int32) + 1
  return tf.where(usable, e, 0), finite


def _scaled(block: tf.Tensor, e: tf.Tensor, finite: tf.Tensor) -> tf.Tensor:
  """block * 2^-e row by row (exact), non-finite rows zeroed; float32."""
  block = tf.cast(block, tf.float32)
  # 2^-e in two factors, each a normal float32, so tiny rows (e down to
  # -149) scale up exactly too.
  first = tf.math.floordiv(-e, 2)
  second = -e - first
  scaled = block * _pow2(first)[:, tf.newaxis] * _pow2(second)[:, tf.newaxis]
  return tf.where(finite[:, tf.newaxis], scaled, tf.zeros_like(scaled))


def _exp2_f64(e: tf.Tensor) -> tf.Tensor:
  return tf.pow(tf.constant(2.0, tf.float64), tf.cast(e, tf.float64))


def l2_norms(blocks) -> tf.Tensor:
  """float64 [n] L2 norm of each row, without overflow; NaN for rows with NaN or Inf.

  Computed as 2^e * ||row * 2^-e|| (the scaled row's squares summed in
  float64, at most d), so even rows of 3e38 get a finite (float64) norm, equal
  to sqrt(sum(float64(x)^2)) up to summation order.
  """
  if not blocks:
    return tf.zeros([0], tf.float64)

  def norms(g, b):
    del g
    e, finite = _exponents(b)
    u64 = tf.cast(_scaled(b, e, finite), tf.float64)  # one block in float64: as exact as NumPy
    norm = _exp2_f64(e) * tf.sqrt(tf.reduce_sum(tf.square(u64), axis=1))
    return tf.where(finite, norm, tf.constant(float('nan'), tf.float64))

  b = _Blocks(blocks)
  return tf.reshape(b.map_raw_rows(norms, tf.float64), [b.num_rows])


FLOAT32_MAX = 3.4028234663852886e38


def finite_rows(blocks, norms: Optional[tf.Tensor] = None) -> tf.Tensor:
  """bool [n]: the clients a defense considers: rows whose entries are finite and whose
  L2 norm (computed without overflow) is finite in float32, i.e. at most float32's max.

  A finite row of 3e38 has a norm of about 3e38 * sqrt(d): it is treated like a
  NaN row (never admitted, not in the median norm, not in any statistic).
  """
  norms = l2_norms(blocks) if norms is None else norms
  # l2_norms is NaN exactly for the rows with NaN or Inf entries.
  return tf.math.is_finite(norms) & (tf.cast(norms, tf.float64) <= FLOAT32_MAX)


# Columns per slice in `gram_and_norms`: an [n, 16384] float32 slice is 6.5 MB at n = 100.
COLUMN_SLICE = 16384


def gram_and_norms(blocks, compute_dtype=tf.float32, reference: Optional[tf.Tensor] = None,
                   column_slice: int = COLUMN_SLICE) -> tuple:
  """(Gram float64 [n, n], L2 norms float64 [n], <reference, x_i> float64 [n] or None).

  One pass over the data, column slice by column slice: the slices of all
  blocks are stacked into [n, w] (a w-column temporary), multiplied with
  themselves in `compute_dtype` and accumulated in float64, so the Gram matrix
  costs one read of the n * d floats and a compute-bound matmul, however the
  rows are grouped (block pair by block pair, small blocks would be read G
  times each).

  Overflow: a row whose largest |entry| is outside [2^-40, 2^40] is scaled
  exactly by 2^-e_i first and the scale is put back in float64, so no entry
  can overflow (see the module doc). Rows with NaN or Inf give zero Gram rows
  and columns, NaN norms and NaN products. Norms are float64 sums of squares
  (as `l2_norms`); the reference ([d], finite) is scaled by its own power of
  two. Results are in canonical row order.
  """
  compute_dtype = tf.as_dtype(compute_dtype)
  if not blocks:
    empty = tf.zeros([0], tf.float64)
    return tf.zeros([0, 0], tf.float64), empty, (None if reference is None else empty)
  pairs = [_rows_and_order(b) for b in blocks]
  rows = [r for r, _ in pairs]
  sizes = [tf.shape(r)[0] for r in rows]
  n, dim = tf.add_n(sizes), tf.shape(rows[0])[1]
  # perm[i]: the stored position of the i-th row in canonical order.
  offsets = tf.concat([[0], tf.cumsum(tf.stack(sizes))], axis=0)
  perm = tf.concat([offsets[g] + (tf.range(sizes[g]) if order is None else
                                  tf.cast(order, tf.int32))
                    for g, (_, order) in enumerate(pairs)], axis=0)
  exponent_parts, finite_parts = [], []
  for r in rows:
    e, f = _exponents(r, safe_range=True)
    exponent_parts.append(e)
    finite_parts.append(f)
  exponent, finite = tf.concat(exponent_parts, 0), tf.concat(finite_parts, 0)
  # 2^-e as two normal float32 factors, applied one after the other (their
  # product can be subnormal, which TF's CPU kernels flush to zero): `_scaled`,
  # with the factors computed once, not per slice. Calling `_scaled` in the
  # loop measured 3.3 s against 2.75 s per model-space round (flame_overhead, n = 30).
  first = tf.math.floordiv(-exponent, 2)
  first_scale = _pow2(first)[:, tf.newaxis]
  second_scale = _pow2(-exponent - first)[:, tf.newaxis]
  if reference is not None:
    reference = tf.reshape(tf.cast(reference, tf.float32), [1, -1])
    e_ref, _ = _exponents(reference)
    scaled_reference = _scaled(reference, e_ref, tf.constant([True]))[0]

  def body(start, gram, squares, products):
    piece = tf.concat([r[:, start:start + column_slice] for r in rows], axis=0)
    piece = tf.cast(piece, tf.float32) * first_scale * second_scale
    piece = tf.where(finite[:, tf.newaxis], piece, 0.0)
    wide = tf.cast(piece, compute_dtype)
    gram += tf.cast(tf.matmul(wide, wide, transpose_b=True), tf.float64)
    squares += tf.reduce_sum(tf.square(tf.cast(piece, tf.float64)), axis=1)
    if reference is not None:
      products += tf.cast(tf.linalg.matvec(
          piece, scaled_reference[start:start + column_slice]), tf.float64)
    return start + column_slice, gram, squares, products

  zeros = tf.zeros([n], tf.float64)
  _, gram, squares, products = tf.while_loop(
      lambda start, *_: start < dim, body,
      (tf.constant(0), tf.zeros([n, n], tf.float64), zeros, zeros), parallel_iterations=1)
  scale = _exp2_f64(exponent)
  gram = 0.5 * (gram + tf.transpose(gram)) * scale[:, tf.newaxis] * scale[tf.newaxis, :]
  nan = tf.constant(float('nan'), tf.float64)
  norms = tf.where(finite, scale * tf.sqrt(squares), nan)
  gram = tf.gather(tf.gather(gram, perm), perm, axis=1)
  norms = tf.gather(norms, perm)
  if reference is None:
    return gram, norms, None
  products = tf.where(finite, products * scale * _exp2_f64(e_ref[0]), nan)
  return gram, norms, tf.gather(products, perm)


def gram_matrix(blocks, compute_dtype=tf.float32,
                reference: Optional[tf.Tensor] = None) -> tf.Tensor:
  """float64 [n, n] Gram matrix <x_i, x_j> of the rows (`gram_and_norms`).

  `compute_dtype` float32 is as fast as a plain float32 matmul; float64 casts
  each slice, for distances between close rows, where float32 cancellation
  matters. Rows with NaN or Inf give zero rows and columns. With `reference`
  ([d] finite, the global model), the Gram matrix of the points
  reference - x_i (FLAME's model space): `model_space_gram`.
  """
  gram, _, products = gram_and_norms(blocks, compute_dtype, reference)
  if reference is None:
    return gram
  return model_space_gram(gram, products, reference)


def model_space_gram(update_gram: tf.Tensor, products: tf.Tensor,
                     reference: tf.Tensor) -> tf.Tensor:
  """float64 [n, n] <r - x_i, r - x_j> = |r|^2 - <r, x_i> - <r, x_j> + <x_i, x_j>.

  From the rows' Gram matrix and the products <r, x_i> that
  `gram_and_norms` accumulates in the same pass, so model space never forms
  r - x_i. Also more accurate than a float32 Gram of r - x_i, whose entries
  are all about |r|^2 (each term here is rounded at its own scale and
  combined in float64). Rows with NaN or Inf (NaN
  products) give zero rows and columns.
  """
  reference = tf.cast(reference, tf.float64)
  finite = tf.math.is_finite(products)
  products = tf.where(finite, products, 0.0)
  gram = (tf.reduce_sum(tf.square(reference)) - products[:, tf.newaxis] -
          products[tf.newaxis, :] + tf.cast(update_gram, tf.float64))
  keep = tf.cast(finite, tf.float64)
  return gram * keep[:, tf.newaxis] * keep[tf.newaxis, :]


def squared_distances_from_gram(gram: tf.Tensor) -> tf.Tensor:
  """float64 [n, n] ||x_i - x_j||^2 = g_ii + g_jj - 2 g_ij, at least 0, zero diagonal.

  Use a float64 Gram matrix (`compute_dtype=tf.float64`) when rows are close
  to each other: the difference cancels, and float32 dot products lose it.
  """
  gram = tf.cast(gram, tf.float64)
  sq = tf.linalg.diag_part(gram)
  d = sq[:, tf.newaxis] + sq[tf.newaxis, :] - 2.0 * gram
  d = 0.5 * (d + tf.transpose(d))
  return tf.linalg.set_diag(tf.maximum(d, 0.0), tf.zeros_like(sq))


def weighted_sum(blocks, weights: tf.Tensor) -> tf.Tensor:
  """float64 [d]: sum_i weights_i * x_i over the rows with a nonzero weight.

  Rows with weight 0 are left out entirely (NaN * 0 would be NaN); the
  others are gathered and cast to float64 one block at a time.
  """
  weights = tf.cast(weights, tf.float64)
  stored = _Blocks(blocks)

  def body(g, total):
    start, stop = stored.rows_of(g)
    w = weights[start:stop]
    keep = tf.cast(tf.where(tf.not_equal(w, 0.0))[:, 0], tf.int32)
    rows = tf.cast(stored.read(g, keep), tf.float64)
    return g + 1, total + tf.linalg.matvec(rows, tf.gather(w, keep), transpose_a=True)

  total = tf.zeros([stored.dim], tf.float64)
  _, total = tf.while_loop(lambda g, _: g < stored.count, body, (tf.constant(0), total),
                           parallel_iterations=1)
  return total


def clip_weights(norms: tf.Tensor, bound: tf.Tensor, admitted: tf.Tensor) -> tf.Tensor:
  """float64 [n]: min(1, bound / norm) for admitted rows with a finite norm, else 0."""
  norms = tf.cast(norms, tf.float64)
  bound = tf.cast(bound, tf.float64)
  usable = tf.cast(admitted, tf.bool) & tf.math.is_finite(norms)
  safe = tf.where(usable & (norms > 0.0), norms, 1.0)
  scale = tf.where(norms > bound, bound / safe, 1.0)
  return tf.where(usable, scale, 0.0)


def clipped_masked_sum(blocks, norms: tf.Tensor, bound: tf.Tensor,
                       admitted: tf.Tensor) -> tf.Tensor:
  """float64 [d]: sum over admitted rows of x_i * min(1, bound / ||x_i||) (FLAME's clipping).

  Rows that are not admitted or whose norm is not finite add nothing.
  """
  return weighted_sum(blocks, clip_weights(norms, bound, admitted))


def concat_rows(blocks, keep: Optional[tf.Tensor] = None) -> tf.Tensor:
  """[m, d]: the rows (all, or those where the bool [n] `keep` is True), concatenated once."""
  if keep is None:
    return tf.concat(rows_of(blocks), axis=0)
  kept = []
  start = tf.constant(0)
  for b in blocks:
    rows, order = _rows_and_order(b)
    size = tf.shape(rows)[0]
    index = tf.range(size) if order is None else tf.cast(order, tf.int32)
    kept.append(tf.gather(rows, tf.boolean_mask(index, keep[start:start + size])))
    start += size
  return tf.concat(kept, axis=0)


def coordinate_median(x: tf.Tensor) -> tf.Tensor:
  """Median along axis 0 as NumPy, without overflow: the two middle values are halved
  before they are added (3e38 + 3e38 would be inf in float32)."""
  sorted_values = tf.sort(x, axis=0)
  n = tf.shape(x)[0]
  lower = tf.gather(sorted_values, (n - 1) // 2)
  upper = tf.gather(sorted_values, n // 2)
  return tf.where(tf.equal(lower, upper), lower, lower / 2 + upper / 2)


def trimmed_mean(x: tf.Tensor, trim_fraction: float) -> tf.Tensor:
  """Per-coordinate mean after dropping floor(beta * n) largest and smallest values.

  The mean is a matmul with weights 1/k, so each term is at most max/k and
  the sum cannot overflow.
  """
  n = tf.shape(x)[0]
  cut = tf.cast(tf.floor(trim_fraction * tf.cast(n, tf.float64)), tf.int32)
  kept = tf.sort(x, axis=0)[cut:n - cut]
  k = tf.shape(kept)[0]
  weights = tf.fill([1, k], 1.0 / tf.cast(k, tf.float64))
  return tf.matmul(tf.cast(weights, kept.dtype), kept)[0]
