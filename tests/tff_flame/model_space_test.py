"""Why the paper clusters models: boosted updates that update-space cosine admits are
rejected when FLAME clusters the local models W_i = G - delta_i, and by the bare
path's default (Euclidean distance between updates). FLAME's pure TF round, as the
factories run it (each factory's round through TFF: tests/tff_flame/gathered_test.py)."""

import pathlib
import sys

import numpy as np
import pytest
import tensorflow as tf

from tff_flame import FlameFactory
from tff_flame import flame

D = 40


def boosted_round(seed=0):
  """7 small benign updates around u, and 3 attackers boosted 30x along u plus a backdoor b."""
  rng = np.random.default_rng(seed)
  global_model = rng.normal(size=D)
  global_model *= 5.0 / np.linalg.norm(global_model)
  u = rng.normal(size=D)
  u /= np.linalg.norm(u)
  b = rng.normal(size=D)
  b -= (b @ u) * u
  b /= np.linalg.norm(b)
  benign = [0.1 * (u + 1.8 * rng.normal(size=D) / np.sqrt(D)) for _ in range(7)]
  boosted = [3.0 * (u + 0.5 * b + 0.05 * rng.normal(size=D)) for _ in range(3)]
  return np.array(benign + boosted, np.float32), global_model.astype(np.float32)


def admitted_attackers(measurements):
  """(attackers admitted, benign admitted), telling attackers by their norm (rows are gathered
  in the server's order, not the clients')."""
  norms = np.asarray(measurements['update_norms'])
  admitted = np.asarray(measurements['admitted']) == 1
  attacker = norms > 1.0
  assert attacker.sum() == 3
  return int((admitted & attacker).sum()), int((admitted & ~attacker).sum())


def test_update_space_admits_boosted_attackers_model_space_rejects_them():
  rows, global_model = boosted_round()
  # The geometry: boosting keeps the update's direction (cosine) but not the model's.
  cos = lambda x, y: x @ y / np.linalg.norm(x) / np.linalg.norm(y)
  assert cos(rows[0], rows[9]) > cos(rows[0], rows[1])
  models = global_model[None] - rows
  assert cos(models[0], models[9]) < cos(models[0], models[1]) - 0.1

  def round_measurements(factory, reference=None):
    _, m = flame.flame_round_blocks([tf.constant(rows)], tf.constant([0, 0], tf.int64), 0.0,
                                    global_model=reference, distance=factory.distance)
    return m

  attackers_in, _ = admitted_attackers(round_measurements(FlameFactory(distance='cosine')))
  assert attackers_in == 3

  bare_default = FlameFactory(noise_lambda=0.0)
  assert bare_default.distance == 'euclidean' and not bare_default.requires_global_model
  attackers_in, benign_in = admitted_attackers(round_measurements(bare_default))
  assert attackers_in == 0 and benign_in == 7

  model_space = FlameFactory(noise_lambda=0.0, clustering_space='model')
  assert model_space.distance == 'cosine' and model_space.requires_global_model
  attackers_in, benign_in = admitted_attackers(
      round_measurements(model_space, tf.constant(global_model)))
  assert attackers_in == 0 and benign_in == 7


if __name__ == '__main__':
  # `bazel test` runs this file as a py_test: pytest, with tests/conftest.py.
  tests_dir = pathlib.Path(__file__).absolute().parents[1]
  sys.exit(pytest.main([__file__, '-p', 'no:cacheprovider', f'--confcutdir={tests_dir}',
                        *sys.argv[1:]]))
