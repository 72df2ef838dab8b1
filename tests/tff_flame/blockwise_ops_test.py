"""blockwise_ops against NumPy float64 re-computations, also for huge (1e19 .. 3e38) rows."""

import pathlib
import sys

import numpy as np
import pytest
import tensorflow as tf

from tff_flame import blockwise_ops
from tff_flame import stacked_ops


def split_rows(x, sizes):
  """Row blocks of x with the given sizes (they sum to len(x); 0 gives an empty block)."""
  assert sum(sizes) == len(x)
  bounds = np.cumsum([0] + list(sizes))
  return [tf.constant(x[bounds[i]:bounds[i + 1]]) for i in range(len(sizes))]


def random_sizes(rng, n, g):
  cuts = np.sort(rng.integers(0, n + 1, size=g - 1))
  return list(np.diff(np.concatenate([[0], cuts, [n]])))


def np_norms(x):
  return np.linalg.norm(x.astype(np.float64), axis=1)


def np_cosine(x):
  x = x.astype(np.float64)
  norms = np.linalg.norm(x, axis=1)
  denom = np.outer(norms, norms)
  cos = np.where(denom > 0, (x @ x.T) / np.where(denom > 0, denom, 1), 0.0)
  d = np.clip(1 - cos, 0, 2)
  np.fill_diagonal(d, 0)
  return d


def huge_rows(d, rng):
  """Finite rows that overflow float32 squares: 1e19, 1e25, 3e38 (all entries, and one entry)."""
  rows = [np.full(d, 1e19), np.full(d, -1e25), np.full(d, 3e38), np.full(d, -3e38),
          np.where(np.arange(d) == 0, 3e38, 0.0), rng.normal(size=d) * 1e25,
          rng.normal(size=d), rng.normal(size=d) * 1e-3,
          # Tiny: squares underflow float32 (1e-60). (Subnormal float32 values are
          # flushed to zero by TF's CPU kernels, so they are not tested here.)
          np.full(d, 1e-30),
          np.zeros(d)]
  return np.stack(rows).astype(np.float32)


CASES = [(1, 1), (2, 1), (3, 2), (10, 3), (57, 8), (12, 12)]


@pytest.mark.parametrize('n,g', CASES)
@pytest.mark.parametrize('compute_dtype', [tf.float32, tf.float64])
def test_gram_norms_distances_match_numpy(n, g, compute_dtype):
  rng = np.random.default_rng(n * 100 + g)
  d = 37
  x = (rng.normal(size=(n, d)) * rng.uniform(0.1, 10, size=(n, 1))).astype(np.float32)
  blocks = split_rows(x, random_sizes(rng, n, g))
  x64 = x.astype(np.float64)
  norms = np_norms(x)
  gram = blockwise_ops.gram_matrix(blocks, compute_dtype).numpy()
  assert gram.dtype == np.float64 and gram.shape == (n, n)
  tol = (1e-6 if compute_dtype == tf.float32 else 1e-13) * np.outer(norms, norms)
  np.testing.assert_array_less(np.abs(gram - x64 @ x64.T), tol + 1e-300)
  np.testing.assert_allclose(blockwise_ops.l2_norms(blocks).numpy(), norms, rtol=1e-6)
  np.testing.assert_allclose(stacked_ops.norms_from_gram(gram).numpy(), norms, rtol=1e-6)
  np.testing.assert_allclose(stacked_ops.cosine_distances_from_gram(gram).numpy(),
                             np_cosine(x), atol=2e-6 if compute_dtype == tf.float32 else 1e-12)
  expected_sq = ((x64[:, None] - x64[None]) ** 2).sum(-1)
  sq = blockwise_ops.squared_distances_from_gram(gram).numpy()
  scale = 1e-5 if compute_dtype == tf.float32 else 1e-12
  np.testing.assert_allclose(sq, expected_sq, atol=scale * norms.max() ** 2)
  assert blockwise_ops.num_rows(blocks).numpy() == n


def test_float64_distances_keep_close_rows_apart():
  """Rows 1e-4 apart relative to their norm: float64 Gram gives their distances, float32 cannot."""
  rng = np.random.default_rng(3)
  base = rng.normal(size=2000)
  x = (base + 1e-4 * rng.normal(size=(6, 2000))).astype(np.float32)
  x64 = x.astype(np.float64)
  expected = ((x64[:, None] - x64[None]) ** 2).sum(-1)
  gram = blockwise_ops.gram_matrix(split_rows(x, [2, 4]), tf.float64)
  got = blockwise_ops.squared_distances_from_gram(gram).numpy()
  np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-12)


def test_huge_rows_do_not_overflow():
  rng = np.random.default_rng(0)
  d = 300
  x = huge_rows(d, rng)
  x64 = x.astype(np.float64)
  blocks = split_rows(x, [3, 0, 4, 3])
  norms = blockwise_ops.l2_norms(blocks).numpy()
  np.testing.assert_allclose(norms, np_norms(x), rtol=1e-6)
  assert np.isfinite(norms).all()
  # Rows whose norm exceeds float32's max count as non-finite clients.
  np.testing.assert_array_equal(blockwise_ops.finite_rows(blocks).numpy(),
                                np_norms(x) <= np.finfo(np.float32).max)
  expected_gram = x64 @ x64.T
  assert np.isfinite(expected_gram).all()
  outer = np.outer(np_norms(x), np_norms(x))
  # float32: a dot product of 300 equal terms rounds coherently, ~1.4e-6 relative.
  for dtype, tol in ((tf.float32, 5e-6), (tf.float64, 1e-13)):
    gram = blockwise_ops.gram_matrix(blocks, dtype).numpy()
    assert np.isfinite(gram).all()
    np.testing.assert_array_less(np.abs(gram - expected_gram), tol * outer + 1e-300)
    cos = stacked_ops.cosine_distances_from_gram(gram).numpy()
    assert np.isfinite(cos).all()
    np.testing.assert_allclose(cos, np_cosine(x), atol=1e-5)
    sq = blockwise_ops.squared_distances_from_gram(gram).numpy()
    assert np.isfinite(sq).all()
  # Norm bound at the median: every huge row is scaled down to it.
  bound = np.median(np_norms(x))
  admitted = np.ones(len(x), bool)
  total = blockwise_ops.clipped_masked_sum(blocks, norms, bound, admitted).numpy()
  scale = np.minimum(1.0, bound / np.where(np_norms(x) > 0, np_norms(x), 1))
  expected = (x64 * scale[:, None]).sum(0)
  assert np.isfinite(total).all()
  np.testing.assert_allclose(total, expected, rtol=1e-6, atol=1e-6 * bound)


def test_non_finite_rows_have_nan_norms_and_zero_gram_rows():
  x = np.array([[1.0, 2.0, 2.0], [np.nan, 0.0, 1.0], [np.inf, 1.0, 1.0], [0.0, 3.0, 4.0],
                [-np.inf, np.nan, 0.0]], np.float32)
  blocks = split_rows(x, [2, 3])
  norms = blockwise_ops.l2_norms(blocks).numpy()
  np.testing.assert_allclose(norms[[0, 3]], [3.0, 5.0])
  assert np.isnan(norms[[1, 2, 4]]).all()
  assert blockwise_ops.finite_rows(blocks).numpy().tolist() == [True, False, False, True, False]
  gram = blockwise_ops.gram_matrix(blocks).numpy()
  assert np.isfinite(gram).all()
  np.testing.assert_allclose(gram[np.ix_([0, 3], [0, 3])], [[9.0, 14.0], [14.0, 25.0]])
  assert (gram[[1, 2, 4]] == 0).all() and (gram[:, [1, 2, 4]] == 0).all()
  # Non-finite rows add nothing to the clipped sum, even if marked admitted.
  total = blockwise_ops.clipped_masked_sum(blocks, norms, 4.0, np.ones(5, bool)).numpy()
  np.testing.assert_allclose(total, x[0].astype(np.float64) + x[3] * 4.0 / 5.0)


@pytest.mark.parametrize('n,g', CASES)
def test_clipped_masked_sum_matches_numpy(n, g):
  rng = np.random.default_rng(n + 7 * g)
  x = (rng.normal(size=(n, 11)) * rng.uniform(0.1, 5, size=(n, 1))).astype(np.float32)
  blocks = split_rows(x, random_sizes(rng, n, g))
  norms = np_norms(x)
  bound = np.median(norms)
  admitted = rng.uniform(size=n) < 0.7
  got = blockwise_ops.clipped_masked_sum(blocks, tf.constant(norms), bound, admitted).numpy()
  scale = np.minimum(1.0, bound / norms)
  expected = (x.astype(np.float64) * (scale * admitted)[:, None]).sum(0)
  np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-12)
  weights = rng.normal(size=n)
  np.testing.assert_allclose(blockwise_ops.weighted_sum(blocks, weights).numpy(),
                             weights @ x.astype(np.float64), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize('column_slice', [1, 7, 37, 1000])
def test_one_pass_over_column_slices_matches_numpy(column_slice):
  # Gram, norms and <r, x_i> accumulated slice by slice, with gathered blocks read
  # through their `order`, a NaN row and a huge row.
  rng = np.random.default_rng(column_slice)
  n, d = 11, 37
  x = (rng.normal(size=(n, d)) * rng.uniform(0.1, 10, size=(n, 1))).astype(np.float32)
  x[4] *= 1e30
  x[7, 2] = np.nan
  reference = rng.normal(size=d).astype(np.float32)
  sizes = [3, 0, 5, 3]
  orders = [rng.permutation(m).astype(np.int32) for m in sizes]
  bounds = np.cumsum([0] + sizes)
  stored = [x[bounds[i]:bounds[i + 1]] for i in range(len(sizes))]
  blocks = [dict(rows=tf.constant(b[np.argsort(o)]), order=tf.constant(o))
            for b, o in zip(stored, orders)]  # rows[order] gives back x's rows
  gram, norms, products = blockwise_ops.gram_and_norms(blocks, tf.float64, reference,
                                                       column_slice=column_slice)
  finite = np.isfinite(x).all(axis=1)
  x64 = np.where(finite[:, None], x.astype(np.float64), 0.0)
  np.testing.assert_allclose(gram.numpy(), x64 @ x64.T, rtol=1e-12)
  expected_norms = np.where(finite, np.linalg.norm(x64, axis=1), np.nan)
  np.testing.assert_allclose(norms.numpy(), expected_norms, rtol=1e-12)
  expected_products = np.where(finite, x64 @ reference.astype(np.float64), np.nan)
  np.testing.assert_allclose(products.numpy(), expected_products, rtol=1e-5)


def test_model_space_reference():
  rng = np.random.default_rng(5)
  x = rng.normal(size=(9, 20)).astype(np.float32)
  reference = (3 * rng.normal(size=20)).astype(np.float32)
  points = (reference[None] - x).astype(np.float64)
  gram = blockwise_ops.gram_matrix(split_rows(x, [4, 0, 5]), tf.float64, reference=reference)
  np.testing.assert_allclose(gram.numpy(), points @ points.T, rtol=1e-6)


def test_model_space_gram_with_huge_and_nan_rows():
  # <r - x_i, r - x_j> from the rows' Gram and <r, x_i>: huge rows stay finite in
  # float64, NaN rows give zero rows and columns.
  rng = np.random.default_rng(6)
  x = rng.normal(size=(7, 20)).astype(np.float32)
  x[2] *= 1e19
  x[5, 3] = np.nan
  reference = (3 * rng.normal(size=20)).astype(np.float32)
  points = reference[None].astype(np.float64) - x.astype(np.float64)
  expected = points @ points.T
  expected[5, :] = expected[:, 5] = 0.0
  gram = blockwise_ops.gram_matrix(split_rows(x, [3, 4]), tf.float32, reference=reference)
  assert np.isfinite(gram.numpy()).all()
  np.testing.assert_allclose(gram.numpy(), expected, rtol=1e-5, atol=1e-4)


def test_works_inside_tf_function_with_unknown_block_sizes():
  spec = tf.TensorSpec([None, 5], tf.float32)

  @tf.function(input_signature=[spec, spec, spec])
  def run(a, b, c):
    blocks = [a, b, c]
    gram = blockwise_ops.gram_matrix(blocks)
    norms = blockwise_ops.l2_norms(blocks)
    admitted = tf.ones_like(norms, tf.bool)
    return gram, norms, blockwise_ops.clipped_masked_sum(blocks, norms, 1.0, admitted)

  rng = np.random.default_rng(1)
  x = rng.normal(size=(7, 5)).astype(np.float32)
  gram, norms, total = run(x[:2], x[2:2], x[2:])
  x64 = x.astype(np.float64)
  np.testing.assert_allclose(gram.numpy(), x64 @ x64.T, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(norms.numpy(), np_norms(x), rtol=1e-6)
  np.testing.assert_allclose(total.numpy(), (x64 / np.maximum(np_norms(x), 1)[:, None]).sum(0),
                             rtol=1e-6, atol=1e-7)


def test_blocks_can_be_gathered_dicts():
  x = np.arange(12, dtype=np.float32).reshape(4, 3)
  blocks = [dict(rows=x[:1], fingerprints=np.zeros(1, np.int64)),
            dict(rows=x[1:], fingerprints=np.zeros(3, np.int64))]
  np.testing.assert_allclose(blockwise_ops.gram_matrix(blocks).numpy(),
                             x.astype(np.float64) @ x.T.astype(np.float64))


def test_concat_rows_once_and_coordinate_statistics():
  rng = np.random.default_rng(2)
  x = rng.normal(size=(9, 6)).astype(np.float32)
  blocks = split_rows(x, [2, 0, 3, 4])
  np.testing.assert_array_equal(blockwise_ops.concat_rows(blocks).numpy(), x)
  keep = rng.uniform(size=9) < 0.5
  np.testing.assert_array_equal(blockwise_ops.concat_rows(blocks, keep).numpy(), x[keep])
  for n in (1, 2, 5, 6, 9):
    rows = x[:n]
    np.testing.assert_allclose(blockwise_ops.coordinate_median(tf.constant(rows)).numpy(),
                               np.median(rows.astype(np.float64), axis=0), rtol=1e-6)
    for beta in (0.0, 0.1, 0.25, 0.4):
      cut = int(np.floor(beta * n))
      expected = np.sort(rows.astype(np.float64), axis=0)[cut:n - cut].mean(axis=0)
      np.testing.assert_allclose(blockwise_ops.trimmed_mean(tf.constant(rows), beta).numpy(),
                                 expected, rtol=1e-5, atol=1e-6)


def test_coordinate_statistics_do_not_overflow():
  x = np.array([[3e38, -3e38], [3e38, -3e38], [3.2e38, -3.1e38], [1.0, 2.0]], np.float32)
  x64 = x.astype(np.float64)
  median = blockwise_ops.coordinate_median(tf.constant(x)).numpy()
  assert np.isfinite(median).all()
  np.testing.assert_allclose(median, np.median(x64, axis=0), rtol=1e-6)
  mean = blockwise_ops.trimmed_mean(tf.constant(x), 0.0).numpy()
  assert np.isfinite(mean).all()
  np.testing.assert_allclose(mean, x64.mean(axis=0), rtol=1e-6)


if __name__ == '__main__':
  # `bazel test` runs this file as a py_test: pytest, with tests/conftest.py.
  tests_dir = pathlib.Path(__file__).absolute().parents[1]
  sys.exit(pytest.main([__file__, '-p', 'no:cacheprovider', f'--confcutdir={tests_dir}',
                        *sys.argv[1:]]))
