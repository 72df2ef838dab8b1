"""Baseline defenses against NumPy re-computations, alone and through TFF."""

import numpy as np
import pathlib
import pytest
import sys
import tensorflow as tf
import tensorflow_federated as tff

import tff_flame
from tff_flame import robust
from tff_flame import stacked_ops


def krum_numpy(x, f, m):
  x = np.asarray(x, np.float64)
  n = len(x)
  d = ((x[:, None] - x[None]) ** 2).sum(-1)
  k = min(max(n - f - 2, 1), n - 1)
  scores = np.array([np.sort(np.delete(d[i], i))[:k].sum() for i in range(n)])
  order = np.argsort(scores, kind='stable')[:m]
  return x[order].mean(axis=0), scores, order


def test_krum_picks_the_smallest_score_and_rejects_the_outlier():
  x = np.array([[0.0, 0.0], [0.1, 0.0], [0.0, 0.2], [0.1, 0.1], [0.05, 0.05], [9.0, 9.0]],
               np.float32)
  aggregate, m = robust.krum_round(tf.constant(x), num_byzantine=1, num_selected=1)
  expected, scores, order = krum_numpy(x, 1, 1)
  np.testing.assert_allclose(m['scores'].numpy(), scores, rtol=1e-5)
  np.testing.assert_allclose(aggregate.numpy(), expected, rtol=1e-6)
  assert order[0] == 4 and m['admitted'].numpy().tolist() == [0, 0, 0, 0, 1, 0]
  assert m['assumption_holds'].numpy() == 1


def test_multi_krum_averages_the_n_minus_f_best():
  rng = np.random.default_rng(0)
  x = np.concatenate([rng.normal(size=(8, 5)), 20 + rng.normal(size=(2, 5))]).astype(np.float32)
  aggregate, m = robust.krum_round(tf.constant(x), num_byzantine=2, num_selected=None)
  expected, _, order = krum_numpy(x, 2, 8)
  np.testing.assert_allclose(aggregate.numpy(), expected, rtol=1e-5)
  assert set(order.tolist()) == set(range(8)) and m['num_admitted'].numpy() == 8


def test_krum_with_too_few_clients_still_runs_and_says_so():
  x = np.array([[0.0], [1.0], [5.0]], np.float32)
  aggregate, m = robust.krum_round(tf.constant(x), num_byzantine=1, num_selected=1)
  assert m['assumption_holds'].numpy() == 0 and m['neighbours'].numpy() == 1
  expected, _, _ = krum_numpy(x, 1, 1)
  np.testing.assert_allclose(aggregate.numpy(), expected)


@pytest.mark.parametrize('n', [1, 2, 5, 6, 9])
def test_median_and_trimmed_mean_match_numpy(n):
  x = np.random.default_rng(n).normal(size=(n, 7))
  np.testing.assert_allclose(stacked_ops.median(tf.constant(x)).numpy(),
                             np.median(x, axis=0))
  for beta in (0.0, 0.1, 0.25, 0.4):
    cut = int(np.floor(beta * n))
    expected = np.sort(x, axis=0)[cut:n - cut].mean(axis=0)
    np.testing.assert_allclose(robust.trimmed_mean(tf.constant(x), beta).numpy(), expected)


def test_non_finite_rows_are_excluded():
  x = np.array([[1.0, 2.0], [np.nan, 0.0], [3.0, 4.0], [np.inf, 1.0], [5.0, 6.0]], np.float32)
  aggregate, m = robust.coordinate_round(tf.constant(x), stacked_ops.median)
  np.testing.assert_allclose(aggregate.numpy(), [3.0, 4.0])
  assert m['num_non_finite'].numpy() == 2 and m['admitted'].numpy().tolist() == [1, 0, 1, 0, 1]
  aggregate, m = robust.krum_round(tf.constant(x), num_byzantine=0, num_selected=1)
  assert np.isfinite(aggregate.numpy()).all() and m['admitted'].numpy()[[1, 3]].sum() == 0


VALUE_TYPE = tff.StructWithPythonType(
    [tff.TensorType(np.float32, [2, 2]), tff.TensorType(np.float32, [3])], list)


def _values(rows):
  return [[r[:4].reshape(2, 2), r[4:]] for r in rows]


def _flat(result):
  return np.concatenate([np.ravel(result[0]), np.ravel(result[1])])


@pytest.mark.parametrize('name', ['krum', 'multi_krum', 'median', 'trimmed_mean'])
def test_factories_through_tff(name):
  rng = np.random.default_rng(3)
  rows = np.concatenate([rng.normal(size=(6, 7)), 30 + rng.normal(size=(2, 7))]).astype(np.float32)
  factory = {
      'krum': lambda: tff_flame.KrumFactory(2, num_selected=1),
      'multi_krum': lambda: tff_flame.KrumFactory(2, num_selected=None),
      'median': tff_flame.CoordinateMedianFactory,
      'trimmed_mean': lambda: tff_flame.TrimmedMeanFactory(0.25),
  }[name]()
  process = factory.create(VALUE_TYPE)
  out = process.next(process.initialize(), _values(rows))
  expected = {
      'krum': lambda: krum_numpy(rows, 2, 1)[0],
      'multi_krum': lambda: krum_numpy(rows, 2, 6)[0],
      'median': lambda: np.median(rows.astype(np.float64), axis=0),
      'trimmed_mean': lambda: np.sort(rows.astype(np.float64), axis=0)[2:6].mean(axis=0),
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


def foolsgold_numpy(updates, kappa=1.0):
  """FoolsGold's weighting as in the authors' NumPy code (loops and all), then the weighted mean."""
  x = np.asarray(updates, np.float64)
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
    return np.zeros(x.shape[1]), np.zeros(n)
  wv = wv / wv.max()
  wv[wv == 1] = .99
  wv = kappa * (np.log(wv / (1 - wv) + 1e-5) + 0.5)
  wv[np.isinf(wv) | (wv > 1)] = 1
  wv[wv < 0] = 0
  if wv.sum() == 0:
    return np.zeros(x.shape[1]), wv
  return (wv[:, None] * x).sum(axis=0) / wv.sum(), wv


def sybil_round(rng, n_benign=7, n_sybil=3, d=12):
  benign = rng.normal(size=(n_benign, d))
  target = rng.normal(size=d)
  sybils = 3 * target + 0.05 * rng.normal(size=(n_sybil, d))
  return np.concatenate([benign, sybils]).astype(np.float32)


@pytest.mark.parametrize('seed,kappa', [(0, 1.0), (1, 1.0), (2, 0.5), (3, 2.0)])
def test_foolsgold_matches_the_authors_numpy_weighting(seed, kappa):
  rows = sybil_round(np.random.default_rng(seed))
  aggregate, m = robust.foolsgold_round(tf.constant(rows), kappa=kappa)
  expected, weights = foolsgold_numpy(rows, kappa)
  np.testing.assert_allclose(m['weights'].numpy(), weights, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(aggregate.numpy(), expected, rtol=1e-4, atol=1e-6)
  # The colluding sybils get weight 0; the benign clients keep some.
  assert m['admitted'].numpy().tolist() == (weights > 0).astype(int).tolist()
  assert m['admitted'].numpy()[7:].sum() == 0 and m['admitted'].numpy()[:7].sum() >= 1


def test_foolsgold_pardons_and_handles_degenerate_rounds():
  # Mixed signs and a zero row: compare every weight with the reference.
  x = np.array([[1.0, 0.0, 0.0], [0.9, 0.1, 0.0], [-1.0, 0.2, 0.0], [0.0, 0.0, 0.0],
                [0.0, 1.0, 1.0]], np.float32)
  _, m = robust.foolsgold_round(tf.constant(x))
  np.testing.assert_allclose(m['weights'].numpy(), foolsgold_numpy(x)[1], rtol=1e-5, atol=1e-6)
  # Identical updates: every weight is 0, no update.
  same = np.ones((4, 3), np.float32)
  aggregate, m = robust.foolsgold_round(tf.constant(same))
  assert m['num_admitted'].numpy() == 0 and m['fallback'].numpy() == 1
  np.testing.assert_array_equal(aggregate.numpy(), np.zeros(3))
  # One client: admitted with weight 1.
  aggregate, m = robust.foolsgold_round(tf.constant([[2.0, -1.0]]))
  np.testing.assert_allclose(aggregate.numpy(), [2.0, -1.0])
  assert m['weights'].numpy().tolist() == [1.0]
  # Non-finite rows get weight 0 and stay out of the similarities.
  rows = sybil_round(np.random.default_rng(5))
  with_nan = np.concatenate([rows[:4], [[np.nan] * 12], rows[4:]]).astype(np.float32)
  aggregate, m = robust.foolsgold_round(tf.constant(with_nan))
  expected, weights = foolsgold_numpy(rows)
  np.testing.assert_allclose(np.delete(m['weights'].numpy(), 4), weights, rtol=1e-5, atol=1e-6)
  assert m['weights'].numpy()[4] == 0 and m['num_non_finite'].numpy() == 1
  np.testing.assert_allclose(aggregate.numpy(), expected, rtol=1e-4, atol=1e-6)
  # A separate history decides the weights; the updates are what gets averaged.
  history = sybil_round(np.random.default_rng(6))
  updates = np.random.default_rng(7).normal(size=history.shape).astype(np.float32)
  aggregate, m = robust.foolsgold_round(tf.constant(updates), tf.constant(history))
  weights = foolsgold_numpy(history)[1]
  np.testing.assert_allclose(aggregate.numpy(), (weights[:, None] * updates).sum(0) / weights.sum(),
                             rtol=1e-4, atol=1e-6)
  with pytest.raises(ValueError, match='kappa'):
    tff_flame.FoolsGoldFactory(kappa=0.0)


def test_foolsgold_through_tff():
  rows = sybil_round(np.random.default_rng(8), d=7)
  process = tff_flame.FoolsGoldFactory().create(VALUE_TYPE)
  out = process.next(process.initialize(), _values(rows))
  expected, weights = foolsgold_numpy(rows)
  np.testing.assert_allclose(_flat(out.result), expected, rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(np.sort(out.measurements['weights']), np.sort(weights),
                             rtol=1e-5, atol=1e-6)
  assert out.measurements['num_admitted'] == (weights > 0).sum()


if __name__ == '__main__':
  # `bazel test` runs this file as a py_test: pytest, with tests/conftest.py.
  tests_dir = pathlib.Path(__file__).absolute().parents[1]
  sys.exit(pytest.main([__file__, '-p', 'no:cacheprovider', f'--confcutdir={tests_dir}',
                        *sys.argv[1:]]))
