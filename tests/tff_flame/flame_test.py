"""FLAME's round and its steps as TF ops against a NumPy + hdbscan re-computation."""

import numpy as np
import pathlib
import pytest
import sys
import tensorflow as tf

from oracles import cosine_distances_numpy
from oracles import euclidean_distances_numpy
from oracles import flame_round_numpy
from oracles import hdbscan_labels_numpy
from tff_flame import flame
from tff_flame import stacked_ops


def benign_and_attackers(rng, n_benign, n_bad, d=50, bad_scale=5.0):
  direction = rng.normal(size=d)
  benign = direction + 0.5 * rng.normal(size=(n_benign, d))
  bad = -direction * bad_scale + 0.05 * rng.normal(size=(n_bad, d))
  return np.concatenate([benign, bad]).astype(np.float32)


def as_blocks(updates):
  """The rows as three row blocks (some empty when n < 3), as the gather delivers them."""
  return [tf.constant(b) for b in np.array_split(np.asarray(updates, np.float32), 3)]


def run(updates, noise_lambda=0.0, seed=(1, 2), **kwargs):
  aggregate, m = flame.flame_round_blocks(as_blocks(updates), tf.constant(seed, tf.int64),
                                          noise_lambda, **kwargs)
  return aggregate.numpy(), {k: np.asarray(v) for k, v in m.items()}


@pytest.mark.parametrize('distance', [None, 'cosine'])
@pytest.mark.parametrize('n_benign,n_bad', [(7, 3), (14, 6), (30, 0), (40, 19), (5, 0)])
def test_round_matches_numpy(n_benign, n_bad, distance):
  rng = np.random.default_rng(n_benign * 100 + n_bad)
  updates = benign_and_attackers(rng, n_benign, n_bad)
  aggregate, m = run(updates, distance=distance)
  expected, want = flame_round_numpy(updates, distance=distance)
  admitted, bound = want['admitted'].astype(bool), want['clipping_bound']
  np.testing.assert_array_equal(m['admitted'].astype(bool), admitted)
  assert m['clipping_bound'] == pytest.approx(bound, rel=1e-6)
  np.testing.assert_allclose(aggregate, expected, rtol=1e-4, atol=1e-6)
  assert not m['admitted'][n_benign:].any()  # the attackers are rejected
  assert m['num_clients'] == n_benign + n_bad
  assert m['num_admitted'] == admitted.sum()
  np.testing.assert_allclose(m['update_norms'], np.linalg.norm(updates.astype(np.float64), axis=1),
                             rtol=1e-6)


def test_model_space_matches_numpy_and_differs_from_update_space():
  rng = np.random.default_rng(3)
  updates = benign_and_attackers(rng, 8, 3, d=30)
  reference = rng.normal(size=30).astype(np.float32) * 3.0
  _, m_model = run(updates, global_model=tf.constant(reference))
  _, want = flame_round_numpy(updates, reference=reference)
  np.testing.assert_array_equal(m_model['admitted'], want['admitted'])
  labels_update = hdbscan_labels_numpy(cosine_distances_numpy(updates), 6)
  labels_model = hdbscan_labels_numpy(cosine_distances_numpy(reference[None] - updates), 6)
  np.testing.assert_array_equal(m_model['cluster_labels'] >= 0, labels_model >= 0)
  assert not np.array_equal(labels_update, labels_model)


def test_clipping_to_median_norm():
  updates = np.diag([1.0, 2.0, 3.0, 4.0, 100.0]).astype(np.float32)
  updates[:, 0] += 10.0  # one shared direction so all are admitted
  aggregate, m = run(updates, min_cluster_size=2)
  norms = np.linalg.norm(updates, axis=1)
  bound = np.median(norms)
  assert m['clipping_bound'] == pytest.approx(bound, rel=1e-6)
  clipped = updates * np.minimum(1.0, bound / norms)[:, None]
  mask = m['admitted'].astype(bool)
  np.testing.assert_allclose(aggregate, clipped[mask].mean(axis=0), rtol=1e-5)
  assert np.linalg.norm(clipped, axis=1).max() <= bound * (1 + 1e-6)


def test_noise_stddev_and_seed():
  rng = np.random.default_rng(5)
  updates = (np.ones(20000) + 0.1 * rng.normal(size=(6, 20000))).astype(np.float32)
  clean, m = run(updates, noise_lambda=0.0)
  noisy, m_noisy = run(updates, noise_lambda=0.01, seed=(4, 0))
  sigma = 0.01 * m['clipping_bound']
  assert m_noisy['noise_stddev'] == pytest.approx(sigma)
  noise = noisy.astype(np.float64) - clean
  assert abs(noise.mean()) < 4 * sigma / np.sqrt(noise.size)
  assert noise.std() == pytest.approx(sigma, rel=0.03)
  again, _ = run(updates, noise_lambda=0.01, seed=(4, 0))
  other, _ = run(updates, noise_lambda=0.01, seed=(4, 1))
  np.testing.assert_array_equal(noisy, again)
  assert not np.allclose(noisy, other)


def test_non_finite_clients_are_never_admitted_and_do_not_move_the_median():
  rng = np.random.default_rng(8)
  updates = benign_and_attackers(rng, 9, 0)
  updates[2, 5] = np.nan
  updates[4, :] = np.inf
  aggregate, m = run(updates)
  expected, want = flame_round_numpy(updates)
  admitted = want['admitted'].astype(bool)
  assert m['num_non_finite'] == 2
  assert m['admitted'][2] == 0 and m['admitted'][4] == 0
  assert m['cluster_labels'][2] == -1 and m['cluster_labels'][4] == -1
  np.testing.assert_array_equal(m['admitted'].astype(bool), admitted)
  finite_norms = np.linalg.norm(np.delete(updates, [2, 4], axis=0).astype(np.float64), axis=1)
  assert m['clipping_bound'] == pytest.approx(np.median(finite_norms), rel=1e-6)
  assert np.isfinite(aggregate).all()
  np.testing.assert_allclose(aggregate, expected, rtol=1e-4, atol=1e-6)


def test_fallback_when_no_majority_cluster_can_exist():
  rng = np.random.default_rng(9)
  updates = benign_and_attackers(rng, 6, 0)
  updates[:4] = np.nan  # 2 finite of 6: fewer than min_cluster_size 4
  aggregate, m = run(updates, noise_lambda=0.5)
  assert m['fallback'] == 1 and m['num_admitted'] == 0 and m['noise_stddev'] == 0.0
  np.testing.assert_array_equal(aggregate, np.zeros_like(aggregate))
  all_nan, m = run(np.full((3, 4), np.nan, np.float32))
  assert m['fallback'] == 1 and m['clipping_bound'] == 0.0
  np.testing.assert_array_equal(all_nan, np.zeros(4))


def test_one_and_two_clients():
  one, m = run(np.array([[3.0, 4.0]], np.float32))
  assert m['num_admitted'] == 1 and m['fallback'] == 0 and m['clipping_bound'] == 5.0
  np.testing.assert_allclose(one, [3.0, 4.0])
  # Two clients: HDBSCAN with min_cluster_size 2 always keeps both, even opposite ones.
  two, m = run(np.array([[1.0, 0.0], [-3.0, 0.0]], np.float32))
  assert m['num_admitted'] == 2 and m['clipping_bound'] == 2.0
  np.testing.assert_allclose(two, [(1.0 - 2.0) / 2, 0.0])


def test_zero_update_has_unit_cosine_distance():
  x = np.array([[0.0, 0.0], [1.0, 0.0], [2.0, 0.0]])
  d = stacked_ops.cosine_distances_from_gram(tf.constant(x @ x.T)).numpy()
  np.testing.assert_allclose(d, [[0, 1, 1], [1, 0, 0], [1, 0, 0]], atol=1e-12)
  np.testing.assert_allclose(cosine_distances_numpy(x), d, atol=1e-12)


@pytest.mark.parametrize('space', ['update', 'model'])
@pytest.mark.parametrize('distance', ['cosine', 'euclidean'])
def test_client_distances_match_numpy(space, distance):
  rng = np.random.default_rng(12)
  updates = benign_and_attackers(rng, 6, 3, d=20)
  updates[4, 7] = np.nan
  updates[1] = 3e38  # finite entries, but a norm float32 cannot hold
  reference = 3.0 * rng.normal(size=20).astype(np.float32) if space == 'model' else None
  distances, norms, finite = flame.client_distances(
      as_blocks(updates), distance, None if reference is None else tf.constant(reference))
  usable = np.ones(9, bool)
  usable[[1, 4]] = False
  np.testing.assert_array_equal(finite.numpy(), usable)
  expected_norms = np.where(usable, np.linalg.norm(np.nan_to_num(updates.astype(np.float64)),
                                                   axis=1), 0.0)
  np.testing.assert_allclose(norms.numpy(), expected_norms, rtol=1e-12)
  kept = updates[usable].astype(np.float64)
  points = kept if reference is None or distance == 'euclidean' else reference[None] - kept
  expected = (cosine_distances_numpy if distance == 'cosine' else euclidean_distances_numpy)(points)
  # The Gram matrix is taken in float32: distances carry its rounding, ~1e-7 of the squared norms.
  np.testing.assert_allclose(distances.numpy()[np.ix_(usable, usable)], expected,
                             rtol=1e-6, atol=1e-6 * expected_norms.max() ** 2)


def test_clipping_bound_and_clipped_mean_match_numpy():
  rng = np.random.default_rng(13)
  updates = (rng.normal(size=(7, 5)) * rng.uniform(0.5, 4, size=(7, 1))).astype(np.float32)
  norms = np.linalg.norm(updates.astype(np.float64), axis=1)
  finite = np.array([True, True, False, True, True, True, False])
  bound = flame.clipping_bound(tf.constant(np.where(finite, norms, 0.0)), tf.constant(finite))
  assert bound.numpy() == pytest.approx(np.median(norms[finite]), rel=1e-12)
  assert flame.clipping_bound(tf.zeros([3], tf.float64), tf.zeros([3], tf.bool)).numpy() == 0.0
  admitted = finite & (np.arange(7) != 0)
  mean = flame.clipped_mean(as_blocks(updates), tf.constant(norms), bound, tf.constant(admitted))
  scale = np.minimum(1.0, bound.numpy() / norms)
  np.testing.assert_allclose(mean.numpy(), (updates * scale[:, None])[admitted].mean(axis=0),
                             rtol=1e-6)
  none = flame.clipped_mean(as_blocks(updates), tf.constant(norms), bound, tf.zeros([7], tf.bool))
  np.testing.assert_array_equal(none.numpy(), np.zeros(5))


def test_median_matches_numpy():
  for n in range(1, 8):
    values = np.random.default_rng(n).normal(size=n)
    assert stacked_ops.median(tf.constant(values)).numpy() == pytest.approx(np.median(values))


def test_noise_lambda_from_privacy():
  assert flame.noise_lambda_from_privacy(3.0, 1e-5) == pytest.approx(
      (1 / 3.0) * np.sqrt(2 * np.log(1.25 / 1e-5)))
  with pytest.raises(ValueError, match='epsilon'):
    flame.noise_lambda_from_privacy(0.0, 1e-5)
  with pytest.raises(ValueError, match='delta'):
    flame.noise_lambda_from_privacy(1.0, 1.5)


if __name__ == '__main__':
  # `bazel test` runs this file as a py_test: pytest, with tests/conftest.py.
  tests_dir = pathlib.Path(__file__).absolute().parents[1]
  sys.exit(pytest.main([__file__, '-p', 'no:cacheprovider', f'--confcutdir={tests_dir}',
                        *sys.argv[1:]]))
