"""feature_ops against NumPy and scipy: chunked row maps, FreqFed's DCT features, L1 sums."""

import pathlib
import sys

import numpy as np
import pytest
import tensorflow as tf

import oracles
from tff_flame import feature_ops


SIZES = [[0], [1], [5], [0, 3, 0, 4, 2], [7, 1, 6]]


@pytest.mark.parametrize('sizes', SIZES)
@pytest.mark.parametrize('chunk_rows', [1, 3, 8])
def test_map_rows_sees_every_row_once_in_canonical_order(sizes, chunk_rows):
  rows = np.random.default_rng(0).normal(size=(sum(sizes), 5)).astype(np.float32)
  blocks = oracles.as_gathered_blocks(rows, len(sizes), sizes)
  fn = lambda chunk, index: tf.concat([chunk, tf.cast(index, tf.float32)[:, None]], axis=1)
  out = feature_ops.map_rows(blocks, fn, tf.float32, [6], chunk_rows).numpy()
  np.testing.assert_array_equal(out[:, :5], rows)
  np.testing.assert_array_equal(out[:, 5], np.arange(len(rows)))


@pytest.mark.parametrize('dim', [1, 2, 3, 4, 10, 16, 37, 1000])
def test_low_frequency_dct_is_scipys_2d_dct_triangle(dim):
  rows = np.random.default_rng(dim).normal(size=(3, dim)).astype(np.float32)
  got = feature_ops.low_frequency_dct(rows).numpy()
  want = np.array([oracles.low_frequency_dct_numpy(r) for r in rows])
  assert got.shape == (3, feature_ops.num_low_frequencies(dim))
  np.testing.assert_allclose(got, want, rtol=0, atol=2e-6 * np.abs(want).max())


def test_dct_sizes():
  assert [feature_ops.dct_side(d) for d in (1, 2, 4, 5, 16, 17, 1_663_370)] == [
      1, 2, 2, 3, 4, 5, 1290]
  # P = 1290 for the EMNIST CNN: h = 645, (h + 1)(h + 2) / 2 coefficients.
  assert feature_ops.num_low_frequencies(1_663_370) == 646 * 647 // 2
  assert feature_ops.num_low_frequencies(1) == 1
  with pytest.raises(ValueError, match='dim'):
    feature_ops.dct_side(0)
  basis = feature_ops.dct_basis(6, 6).numpy()
  np.testing.assert_allclose(basis @ basis.T, np.eye(6), atol=1e-6)  # orthonormal


def test_unit_scale_factors_reach_unit_norm_without_underflow():
  norms = np.array([1e-30, 1.0, 3.0e38, 5.0, 0.0, np.nan])
  usable = np.array([True, True, True, False, True, False])
  factors = feature_ops.unit_scale_factors(tf.constant(norms), tf.constant(usable)).numpy()
  product = factors[:, 0].astype(np.float64) * factors[:, 1]
  np.testing.assert_allclose(product[:3] * norms[:3], 1.0, rtol=1e-6)
  np.testing.assert_array_equal(product[3:], 0.0)


def test_low_frequency_features_scale_rows_and_zero_the_unusable():
  rng = np.random.default_rng(1)
  rows = rng.normal(size=(6, 30)).astype(np.float32)
  rows[1] = 3e38 * np.sign(rows[1])  # finite entries; the DCT of the raw row would overflow
  rows[1, 5:] = 0.0
  rows[3, 2] = np.nan
  rows[4] = 0.0
  norms = np.linalg.norm(np.nan_to_num(rows.astype(np.float64)), axis=1)
  usable = np.isfinite(rows).all(axis=1)
  factors = feature_ops.unit_scale_factors(tf.constant(norms), tf.constant(usable))
  blocks = oracles.as_gathered_blocks(rows, 2, [2, 4])
  got = feature_ops.low_frequency_features(blocks, factors, chunk_rows=3).numpy()
  assert np.isfinite(got).all()
  for i in (0, 1, 2, 5):
    want = oracles.low_frequency_dct_numpy(rows[i].astype(np.float64) / norms[i])
    np.testing.assert_allclose(got[i], want, atol=2e-6)
  np.testing.assert_array_equal(got[[3, 4]], 0.0)


def l1_sums_numpy(rows, keep):
  x = rows[keep].astype(np.float64)
  sums = np.zeros(len(rows))
  sums[keep] = np.abs(x[:, None, :] - x[None, :, :]).sum(axis=(1, 2))
  return sums


@pytest.mark.parametrize('sizes', SIZES)
@pytest.mark.parametrize('column_slice', [1, 7, 4096])
def test_manhattan_distance_sums_equal_pairwise_numpy(sizes, column_slice):
  rng = np.random.default_rng(sum(sizes))
  n = sum(sizes)
  rows = rng.normal(size=(n, 23)).astype(np.float32)
  rows[::3] = np.round(rows[::3])  # ties within columns
  if n > 2:
    rows[2] = rows[0]  # a duplicate row
  keep = rng.random(n) < 0.8
  blocks = oracles.as_gathered_blocks(rows, n, sizes)
  got = feature_ops.manhattan_distance_sums(blocks, tf.constant(keep), column_slice).numpy()
  np.testing.assert_allclose(got, l1_sums_numpy(rows, keep), rtol=1e-12, atol=1e-9)
  everyone = feature_ops.manhattan_distance_sums(blocks, column_slice=column_slice).numpy()
  np.testing.assert_allclose(everyone, l1_sums_numpy(rows, np.ones(n, bool)), rtol=1e-12,
                             atol=1e-9)


def test_manhattan_distance_sums_do_not_overflow():
  rows = np.zeros((4, 9), np.float32)
  rows[0, 3] = 3.4e38
  rows[1, 3] = -3.4e38  # |difference| 6.8e38 overflows float32
  rows[2] = 1e37
  rows[3] = np.nan
  keep = np.array([True, True, True, False])
  got = feature_ops.manhattan_distance_sums([tf.constant(rows)], tf.constant(keep), 4).numpy()
  assert np.isfinite(got).all()
  np.testing.assert_allclose(got, l1_sums_numpy(rows, keep), rtol=1e-12)


if __name__ == '__main__':
  # `bazel test` runs this file as a py_test: pytest, with tests/conftest.py.
  tests_dir = pathlib.Path(__file__).absolute().parents[1]
  sys.exit(pytest.main([__file__, '-p', 'no:cacheprovider', f'--confcutdir={tests_dir}',
                        *sys.argv[1:]]))
