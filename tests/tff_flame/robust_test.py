"""Baseline defenses against NumPy re-computations (`tests/oracles.py`), alone and through TFF."""

import numpy as np
import pathlib
import pytest
import sys
import tensorflow as tf
import tensorflow_federated as tff

import tff_flame
from oracles import coordinate_round_numpy
from oracles import cosine_distances_numpy
from oracles import foolsgold_round_numpy
from oracles import foolsgold_weights_numpy
from oracles import krum_round_numpy
from oracles import median_numpy
from oracles import trimmed_mean_numpy
from tff_flame import blockwise_ops
from tff_flame import robust
from tff_flame import stacked_ops


def as_blocks(x):
  """The rows as three row blocks (some empty when n < 3), as the gather delivers them."""
  return [tf.constant(b) for b in np.array_split(np.asarray(x, np.float32), 3)]


def krum(x, f, m):
  aggregate, measurements = robust.krum_round_blocks(as_blocks(x), f, m)
  return aggregate.numpy(), {k: np.asarray(v) for k, v in measurements.items()}


def test_krum_picks_the_smallest_score_and_rejects_the_outlier():
  x = np.array([[0.0, 0.0], [0.1, 0.0], [0.0, 0.2], [0.1, 0.1], [0.05, 0.05], [9.0, 9.0]],
               np.float32)
  aggregate, m = krum(x, 1, 1)
  expected, want = krum_round_numpy(x, 1, 1)
  np.testing.assert_allclose(m['scores'], want['scores'], rtol=1e-5)
  np.testing.assert_allclose(aggregate, expected, rtol=1e-6)
  assert want['admitted'].tolist() == [0, 0, 0, 0, 1, 0] and m['admitted'].tolist() == [0, 0, 0, 0, 1, 0]
  assert m['assumption_holds'] == 1


def test_multi_krum_averages_the_n_minus_f_best():
  rng = np.random.default_rng(0)
  x = np.concatenate([rng.normal(size=(8, 5)), 20 + rng.normal(size=(2, 5))]).astype(np.float32)
  aggregate, m = krum(x, 2, None)
  expected, want = krum_round_numpy(x, 2, None)
  np.testing.assert_allclose(aggregate, expected, rtol=1e-5)
  assert want['admitted'].tolist() == [1] * 8 + [0] * 2 and m['num_admitted'] == 8
  np.testing.assert_array_equal(m['admitted'], want['admitted'])


def test_krum_with_too_few_clients_still_runs_and_says_so():
  x = np.array([[0.0], [1.0], [5.0]], np.float32)
  aggregate, m = krum(x, 1, 1)
  assert m['assumption_holds'] == 0 and m['neighbours'] == 1
  expected, _ = krum_round_numpy(x, 1, 1)
  np.testing.assert_allclose(aggregate, expected)


@pytest.mark.parametrize('n', [1, 2, 5, 6, 9])
def test_median_and_trimmed_mean_match_numpy(n):
  x = np.random.default_rng(n).normal(size=(n, 7))
  np.testing.assert_allclose(stacked_ops.median(tf.constant(x)).numpy(), median_numpy(x))
  for beta in (0.0, 0.1, 0.25, 0.4):
    aggregate, _ = robust.coordinate_round_blocks(
        as_blocks(x), lambda v, beta=beta: blockwise_ops.trimmed_mean(v, beta))
    expected, _ = coordinate_round_numpy(x.astype(np.float32), lambda v: trimmed_mean_numpy(v, beta))
    np.testing.assert_allclose(aggregate.numpy(), expected, rtol=1e-5, atol=1e-6)


def test_non_finite_rows_are_excluded():
  x = np.array([[1.0, 2.0], [np.nan, 0.0], [3.0, 4.0], [np.inf, 1.0], [5.0, 6.0]], np.float32)
  aggregate, m = robust.coordinate_round_blocks(as_blocks(x), blockwise_ops.coordinate_median)
  np.testing.assert_allclose(aggregate.numpy(), [3.0, 4.0])
  assert m['num_non_finite'].numpy() == 2 and m['admitted'].numpy().tolist() == [1, 0, 1, 0, 1]
  aggregate, m = krum(x, 0, 1)
  assert np.isfinite(aggregate).all() and m['admitted'][[1, 3]].sum() == 0


VALUE_TYPE = tff.StructWithPythonType(
    [tff.TensorType(np.float32, [2, 2]), tff.TensorType(np.float32, [3])], list)


def _values(rows):
  return [[r[:4].reshape(2, 2), r[4:]] for r in rows]


def _flat(result):
  return np.concatenate([np.ravel(result[0]), np.ravel(result[1])])


# Krum is KrumFactory(num_selected=1): its selection is tested above and through TFF in
# tests/tff_flame/gathered_test.py; here the public `create` of each factory class once.
@pytest.mark.parametrize('name', ['multi_krum', 'median', 'trimmed_mean'])
def test_factories_through_tff(name):
  rng = np.random.default_rng(3)
  rows = np.concatenate([rng.normal(size=(6, 7)), 30 + rng.normal(size=(2, 7))]).astype(np.float32)
  factory = {
      'multi_krum': lambda: tff_flame.KrumFactory(2, num_selected=None),
      'median': tff_flame.CoordinateMedianFactory,
      'trimmed_mean': lambda: tff_flame.TrimmedMeanFactory(0.25),
  }[name]()
  process = factory.create(VALUE_TYPE)
  out = process.next(process.initialize(), _values(rows))
  expected = {
      'multi_krum': lambda: krum_round_numpy(rows, 2, 6)[0],
      'median': lambda: coordinate_round_numpy(rows, median_numpy)[0],
      'trimmed_mean': lambda: coordinate_round_numpy(rows, lambda v: trimmed_mean_numpy(v, 0.25))[0],
  }[name]()
  np.testing.assert_allclose(_flat(out.result), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize('name', ['norm_bounding', 'weak_dp'])
def test_non_finite_filter_leaves_nan_clients_out_of_tff_factories(name):
  rows = np.array([[3.0, 4.0, 0, 0, 0, 0, 0], [0, 0, 0, 0, 0, 0, 0.5],
                   [np.nan, 0, 0, 0, 0, 0, 0]], np.float32)
  inner = (tff.aggregators.clipping_factory(1.0, tff.aggregators.MeanFactory())
           if name == 'norm_bounding' else
           tff.aggregators.DifferentiallyPrivateFactory.gaussian_fixed(
               noise_multiplier=0.0, clients_per_round=2, clip=1.0))
  factory = tff_flame.NonFiniteFilterFactory(inner, inner_name=name)
  process = factory.create(VALUE_TYPE)
  out = process.next(process.initialize(), _values(rows))
  # Clipped finite updates, summed; norm bounding averages the 2 finite ones and
  # weak DP divides by its fixed clients_per_round (2): both give the same here.
  np.testing.assert_allclose(_flat(out.result), ([0.6, 0.8, 0, 0, 0, 0, 0] + rows[1]) / 2,
                             rtol=1e-5)
  assert out.measurements['num_non_finite'] == 1


def foolsgold(rows, kappa=1.0):
  aggregate, measurements = robust.foolsgold_round_blocks(as_blocks(rows), kappa)
  return aggregate.numpy(), {k: np.asarray(v) for k, v in measurements.items()}


def sybil_round(rng, n_benign=7, n_sybil=3, d=12):
  benign = rng.normal(size=(n_benign, d))
  target = rng.normal(size=d)
  sybils = 3 * target + 0.05 * rng.normal(size=(n_sybil, d))
  return np.concatenate([benign, sybils]).astype(np.float32)


@pytest.mark.parametrize('seed,kappa', [(0, 1.0), (1, 1.0), (2, 0.5), (3, 2.0)])
def test_foolsgold_matches_the_authors_numpy_weighting(seed, kappa):
  rows = sybil_round(np.random.default_rng(seed))
  aggregate, m = foolsgold(rows, kappa=kappa)
  expected, want = foolsgold_round_numpy(rows, kappa=kappa)
  weights = want['weights']
  np.testing.assert_allclose(m['weights'], weights, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(aggregate, expected, rtol=1e-4, atol=1e-6)
  # The colluding sybils get weight 0; the benign clients keep some.
  assert m['admitted'].tolist() == (weights > 0).astype(int).tolist()
  assert m['admitted'][7:].sum() == 0 and m['admitted'][:7].sum() >= 1


def test_foolsgold_pardons_and_handles_degenerate_rounds():
  # Mixed signs and a zero row: compare every weight with the reference.
  x = np.array([[1.0, 0.0, 0.0], [0.9, 0.1, 0.0], [-1.0, 0.2, 0.0], [0.0, 0.0, 0.0],
                [0.0, 1.0, 1.0]], np.float32)
  _, m = foolsgold(x)
  np.testing.assert_allclose(m['weights'], foolsgold_weights_numpy(x), rtol=1e-5, atol=1e-6)
  # Identical updates: every weight is 0, no update.
  same = np.ones((4, 3), np.float32)
  aggregate, m = foolsgold(same)
  assert m['num_admitted'] == 0 and m['fallback'] == 1
  np.testing.assert_array_equal(aggregate, np.zeros(3))
  # One client: admitted with weight 1.
  aggregate, m = foolsgold(np.array([[2.0, -1.0]], np.float32))
  np.testing.assert_allclose(aggregate, [2.0, -1.0])
  assert m['weights'].tolist() == [1.0]
  # Non-finite rows get weight 0 and stay out of the similarities.
  rows = sybil_round(np.random.default_rng(5))
  with_nan = np.concatenate([rows[:4], [[np.nan] * 12], rows[4:]]).astype(np.float32)
  aggregate, m = foolsgold(with_nan)
  expected, want = foolsgold_round_numpy(rows)
  np.testing.assert_allclose(np.delete(m['weights'], 4), want['weights'], rtol=1e-5, atol=1e-6)
  assert m['weights'][4] == 0 and m['num_non_finite'] == 1
  np.testing.assert_allclose(aggregate, expected, rtol=1e-4, atol=1e-6)
  # Histories kept by a caller that knows the client ids: weights from their similarities.
  history = sybil_round(np.random.default_rng(6))
  weights = robust.foolsgold_weights_from_cosine(
      tf.constant(1.0 - cosine_distances_numpy(history))).numpy()
  want_weights = foolsgold_weights_numpy(history)
  np.testing.assert_allclose(weights, want_weights, rtol=1e-5, atol=1e-6)
  assert weights[7:].sum() == 0 and want_weights[7:].sum() == 0
  with pytest.raises(ValueError, match='kappa'):
    tff_flame.FoolsGoldFactory(kappa=0.0)


def test_foolsgold_through_tff():
  rows = sybil_round(np.random.default_rng(8), d=7)
  process = tff_flame.FoolsGoldFactory().create(VALUE_TYPE)
  out = process.next(process.initialize(), _values(rows))
  expected, want = foolsgold_round_numpy(rows)
  weights = want['weights']
  np.testing.assert_allclose(_flat(out.result), expected, rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(np.sort(out.measurements['weights']), np.sort(weights),
                             rtol=1e-5, atol=1e-6)
  assert out.measurements['num_admitted'] == (weights > 0).sum()


if __name__ == '__main__':
  # `bazel test` runs this file as a py_test: pytest, with tests/conftest.py.
  tests_dir = pathlib.Path(__file__).absolute().parents[1]
  sys.exit(pytest.main([__file__, '-p', 'no:cacheprovider', f'--confcutdir={tests_dir}',
                        *sys.argv[1:]]))
