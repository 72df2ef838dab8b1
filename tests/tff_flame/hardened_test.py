"""The hardened FLAME: its alike step and round against NumPy, and the round FLAME loses."""

import pathlib
import sys

import numpy as np
import pytest
import tensorflow as tf

import oracles
from tff_flame import flame
from tff_flame import hardened

DIM = 40


def stay_small_round(num_benign, num_attackers, seed, dim=DIM):
  """Benign updates spread in direction (non-IID) with norms 0.8-1.5; attackers share one
  direction (small per-attacker noise) at norm 0.6: smaller than the benign, and alike."""
  rng = np.random.default_rng(seed)
  benign = rng.normal(size=(num_benign, dim))
  benign *= rng.uniform(0.8, 1.5, size=(num_benign, 1)) / np.linalg.norm(benign, axis=1,
                                                                          keepdims=True)
  shared = rng.normal(size=dim)
  attackers = shared + 0.5 * rng.normal(size=(num_attackers, dim))
  attackers *= 0.6 / np.linalg.norm(attackers, axis=1, keepdims=True)
  rows = np.concatenate([benign, attackers]).astype(np.float32)
  flags = np.array([0] * num_benign + [1] * num_attackers)
  return rows, flags


GLOBAL_MODEL = (10.0 * np.random.default_rng(5).normal(size=DIM)).astype(np.float32)


def blocks_of(rows, groups=3, seed=0):
  rng = np.random.default_rng(seed)
  cuts = np.sort(rng.integers(0, len(rows) + 1, size=groups - 1))
  bounds = np.concatenate([[0], cuts, [len(rows)]])
  return [dict(rows=tf.constant(rows[bounds[i]:bounds[i + 1]]),
               order=tf.range(bounds[i + 1] - bounds[i])) for i in range(groups)]


def with_bad_rows(rows, n):
  rows = rows.copy()
  if n >= 10:
    rows[1] = rows[0]  # a duplicate benign update
    rows[2, 3] = np.nan
    rows[3] = np.inf
  if n >= 20:
    rows[4] = 1e19
    rows[5] = 3e38
  return rows


@pytest.mark.parametrize('n', [2, 3, 10, 20, 57])
@pytest.mark.parametrize('space', ['update', 'model'])
def test_round_equals_numpy(n, space):
  num_attackers = n // 4
  rows, _ = stay_small_round(n - num_attackers, num_attackers, seed=n)
  rows = with_bad_rows(rows, n)
  reference = GLOBAL_MODEL if space == 'model' else None
  want_agg, want = oracles.hardened_round_numpy(rows, reference=reference)
  got_agg, got = hardened.hardened_round_blocks(
      blocks_of(rows, seed=n), tf.constant([0, 0], tf.int64), 0.0,
      global_model=None if reference is None else tf.constant(reference))
  for key in ('alike', 'admitted', 'num_admitted', 'num_alike', 'num_non_finite'):
    np.testing.assert_array_equal(np.asarray(got[key]), want[key], err_msg=key)
  assert float(got['clipping_bound']) == pytest.approx(want['clipping_bound'], rel=1e-9)
  if np.isfinite(want['alike_similarity']):
    assert float(got['alike_similarity']) == pytest.approx(want['alike_similarity'], abs=1e-6)
  np.testing.assert_allclose(got_agg, want_agg, rtol=1e-5, atol=1e-6)
  assert np.isfinite(np.asarray(got_agg)).all()


def test_flame_admits_the_small_alike_attackers_the_hardened_round_rejects_them():
  rows, flags = stay_small_round(14, 6, seed=3, dim=400)
  blocks = blocks_of(rows)
  seed = tf.constant([1, 2], tf.int64)
  global_model = tf.constant(10.0 * np.random.default_rng(5).normal(size=400), tf.float32)
  _, plain = flame.flame_round_blocks(blocks, seed, 0.0, global_model=global_model)
  _, hard = hardened.hardened_round_blocks(blocks, seed, 0.0, global_model=global_model)
  plain_admitted = np.asarray(plain['admitted']).astype(bool)
  hard_admitted = np.asarray(hard['admitted']).astype(bool)
  assert plain_admitted[flags == 1].all()  # FLAME: every attacker in, at the centre
  assert plain_admitted[flags == 0].mean() < 0.5  # and benign clients out in their place
  np.testing.assert_array_equal(np.asarray(hard['alike']), flags)  # exactly the attackers
  assert not hard_admitted[flags == 1].any()
  assert hard_admitted[flags == 0].sum() >= 14 // 2 + 1  # a majority of the benign clients


def test_a_benign_round_loses_nobody_to_the_alike_step():
  rows, _ = stay_small_round(20, 0, seed=8)
  alike, tau = oracles.alike_numpy(rows)
  got, got_tau = hardened.alike_clients(
      1.0 - oracles.cosine_distances_numpy(rows), tf.ones(20, tf.bool), 2.0, 3)
  assert not alike.any() and not np.asarray(got).any()
  assert float(got_tau) == pytest.approx(tau, abs=1e-9)


def test_the_factory_checks_its_arguments():
  with pytest.raises(ValueError, match='alike_group'):
    hardened.HardenedFlameFactory(alike_group=1)
  with pytest.raises(ValueError, match='alike_threshold'):
    hardened.HardenedFlameFactory(alike_threshold=-1.0)
  with pytest.raises(ValueError, match='min_cluster_size'):
    hardened.HardenedFlameFactory(min_cluster_size=3)
  factory = hardened.HardenedFlameFactory(clustering_space='model', noise_lambda=0.01)
  assert factory.requires_global_model and isinstance(factory, flame.FlameFactory)


if __name__ == '__main__':
  # `bazel test` runs this file as a py_test: pytest, with tests/conftest.py.
  tests_dir = pathlib.Path(__file__).absolute().parents[1]
  sys.exit(pytest.main([__file__, '-p', 'no:cacheprovider', f'--confcutdir={tests_dir}',
                        *sys.argv[1:]]))
