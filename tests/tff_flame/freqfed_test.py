"""FreqFed against the NumPy + scipy + `hdbscan` oracle, alone and through TFF."""

import pathlib
import sys

import numpy as np
import oracles
import pytest
import tensorflow as tf
import tensorflow_federated as tff

import tff_flame
from tff_flame import blockwise_ops
from tff_flame import freqfed

DIM = 40


def client_rows(n, seed):
  """Benign updates around one direction, a third pushing another direction (tight), NaN/Inf,
  zero and duplicate rows."""
  def other_direction(direction, count, rng):
    return rng.normal(size=direction.shape) + 0.1 * rng.normal(size=(count, direction.size))
  return oracles.synthetic_round(n, seed, DIM, other_direction)


def reference_model(space):
  return None if space == 'update' else np.random.default_rng(99).normal(
      size=DIM).astype(np.float32)


@pytest.mark.parametrize('n', [1, 2, 3, 10, 50])
@pytest.mark.parametrize('seed', [0, 1, 2])
@pytest.mark.parametrize('space', ['update', 'model'])
def test_round_equals_the_numpy_oracle(n, seed, space):
  rows = client_rows(n, seed)
  reference = reference_model(space)
  blocks = oracles.as_gathered_blocks(rows, seed)
  aggregate, m = freqfed.freqfed_round_blocks(blocks, global_model=reference)
  want = oracles.freqfed_round_numpy(rows, reference=reference)
  usable = oracles.usable_rows(rows)
  norms = blockwise_ops.l2_norms(blocks)
  distances = freqfed.low_frequency_distances(blocks, norms, tf.constant(usable), reference)
  np.testing.assert_allclose(distances.numpy()[np.ix_(usable, usable)], want['distances'],
                             rtol=0, atol=1e-6)
  np.testing.assert_array_equal(m['admitted'].numpy(), want['admitted'].astype(np.int32))
  np.testing.assert_array_equal(m['cluster_labels'].numpy() >= 0, want['labels'] >= 0)
  np.testing.assert_allclose(aggregate.numpy(), want['aggregate'], rtol=1e-5, atol=1e-6)
  assert m['num_clients'].numpy() == n
  assert m['num_admitted'].numpy() == want['admitted'].sum()
  assert m['num_non_finite'].numpy() == n - usable.sum()
  assert m['fallback'].numpy() == int(not want['admitted'].any())
  if n >= 10:  # the round is not trivial: a majority is admitted, no attacker among them
    assert want['admitted'].sum() >= n // 2 + 1
    assert not want['admitted'][n - n // 3:].any()


def test_opposite_attackers_are_rejected_in_update_space():
  rng = np.random.default_rng(5)
  direction = rng.normal(size=300)
  benign = direction + 0.8 * rng.normal(size=(14, 300))
  attackers = -direction + 0.05 * rng.normal(size=(6, 300))
  rows = np.concatenate([benign, attackers]).astype(np.float32)
  _, m = freqfed.freqfed_round_blocks([tf.constant(rows)])
  admitted = m['admitted'].numpy()
  assert admitted[14:].sum() == 0 and admitted[:14].sum() >= 11


def test_boosted_attackers_are_rejected_in_model_space_only():
  """Updates boosted along the benign direction have the benign cosine: update space admits
  them; the local models G - delta they make point elsewhere, and model space rejects them."""
  rng = np.random.default_rng(6)
  direction = rng.normal(size=300)
  benign = direction + 0.5 * rng.normal(size=(14, 300))
  boosted = 20.0 * (direction + 0.5 * rng.normal(size=(6, 300)))
  rows = np.concatenate([benign, boosted]).astype(np.float32)
  global_model = (3.0 * rng.normal(size=300)).astype(np.float32)
  _, in_models = freqfed.freqfed_round_blocks([tf.constant(rows)], global_model=global_model)
  admitted = in_models['admitted'].numpy()
  assert admitted[14:].sum() == 0 and admitted[:14].sum() >= 11
  want = oracles.freqfed_round_numpy(rows, reference=global_model)
  np.testing.assert_array_equal(admitted, want['admitted'])
  _, in_updates = freqfed.freqfed_round_blocks([tf.constant(rows)])
  assert in_updates['admitted'].numpy()[14:].sum() > 0


def test_non_finite_and_huge_clients_are_never_admitted():
  rng = np.random.default_rng(7)
  direction = rng.normal(size=DIM)
  rows, num_non_finite = oracles.with_huge_clients(direction + 0.3 * rng.normal(size=(9, DIM)))
  for space in ('update', 'model'):
    reference = reference_model(space)
    aggregate, m = freqfed.freqfed_round_blocks(oracles.as_gathered_blocks(rows, 3, [5, 0, 10]),
                                                global_model=reference)
    want = oracles.freqfed_round_numpy(rows, reference=reference)
    admitted = m['admitted'].numpy()
    assert np.isfinite(aggregate.numpy()).all()
    assert admitted[9:].sum() == 0 and admitted[:9].sum() >= 8, (space, admitted)
    np.testing.assert_array_equal(admitted, want['admitted'])
    np.testing.assert_allclose(aggregate.numpy(), want['aggregate'], rtol=1e-5, atol=1e-6)
    assert m['num_non_finite'].numpy() == num_non_finite


def test_nobody_admitted_gives_a_zero_update():
  rows = np.full((3, 5), np.nan, np.float32)
  rows[0] = 1.0
  aggregate, m = freqfed.freqfed_round_blocks([tf.constant(rows)])
  np.testing.assert_array_equal(aggregate.numpy(), np.zeros(5))
  assert m['fallback'].numpy() == 1 and m['num_admitted'].numpy() == 0
  aggregate, m = freqfed.freqfed_round_blocks([tf.zeros([0, 5]), tf.zeros([0, 5])])  # no client
  np.testing.assert_array_equal(aggregate.numpy(), np.zeros(5))
  assert m['num_clients'].numpy() == 0 and m['fallback'].numpy() == 1


SHAPES = [(4, 5), (DIM - 20,)]  # the clients' values: a list of two float32 tensors


@pytest.mark.parametrize('space', ['update', 'model'])
def test_through_tff_equals_the_oracle(space):
  rows = client_rows(16, seed=11)
  reference = reference_model(space)
  factory = tff_flame.FreqFedFactory(clustering_space=space, max_clients=32)
  if factory.requires_global_model:
    with pytest.raises(ValueError, match='global model'):
      factory.create(tff.TensorType(np.float32, [DIM]))
  result, m = oracles.tff_round(factory, rows, SHAPES, reference)
  want = oracles.freqfed_round_numpy(rows, reference=reference)
  np.testing.assert_allclose(result, want['aggregate'], rtol=1e-5, atol=1e-6)
  assert m['num_admitted'] == want['admitted'].sum() and m['num_clients'] == 16
  assert m['num_non_finite'] == 2
  assert sorted(np.asarray(m['admitted']).tolist()) == sorted(want['admitted'].astype(int))


def test_factory_arguments():
  for bad in (dict(min_cluster_size=1), dict(min_samples=0), dict(clustering_space='weights'),
              dict(max_clients=0)):
    with pytest.raises(ValueError):
      tff_flame.FreqFedFactory(**bad)
  assert tff_flame.FreqFedFactory().clustering_space == 'update'
  assert not tff_flame.FreqFedFactory().requires_global_model


if __name__ == '__main__':
  # `bazel test` runs this file as a py_test: pytest, with tests/conftest.py.
  tests_dir = pathlib.Path(__file__).absolute().parents[1]
  sys.exit(pytest.main([__file__, '-p', 'no:cacheprovider', f'--confcutdir={tests_dir}',
                        *sys.argv[1:]]))
