"""Why the paper clusters models: boosted updates that update-space cosine admits are
rejected when FLAME clusters the local models W_i = G - delta_i, and by the bare
path's default (Euclidean distance between updates)."""

import pathlib
import sys

import numpy as np
import pytest
import tensorflow_federated as tff

from tff_flame import FlameFactory

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
  value_type = tff.TensorType(np.float32, [D])
  # The geometry: boosting keeps the update's direction (cosine) but not the model's.
  cos = lambda x, y: x @ y / np.linalg.norm(x) / np.linalg.norm(y)
  assert cos(rows[0], rows[9]) > cos(rows[0], rows[1])
  models = global_model[None] - rows
  assert cos(models[0], models[9]) < cos(models[0], models[1]) - 0.1

  update_cosine = FlameFactory(noise_lambda=0.0, distance='cosine').create(value_type)
  m = update_cosine.next(update_cosine.initialize(), list(rows)).measurements
  attackers_in, _ = admitted_attackers(m)
  assert attackers_in == 3

  bare_default = FlameFactory(noise_lambda=0.0)
  assert bare_default.distance == 'euclidean' and not bare_default.requires_global_model
  bare = bare_default.create(value_type)
  m = bare.next(bare.initialize(), list(rows)).measurements
  attackers_in, benign_in = admitted_attackers(m)
  assert attackers_in == 0 and benign_in == 7

  model_space = FlameFactory(noise_lambda=0.0, clustering_space='model').create_gathered(
      value_type)
  m = model_space.next(model_space.initialize(), list(rows), global_model).measurements
  attackers_in, benign_in = admitted_attackers(m)
  assert attackers_in == 0 and benign_in == 7


if __name__ == '__main__':
  # `bazel test` runs this file as a py_test: pytest, with tests/conftest.py.
  tests_dir = pathlib.Path(__file__).absolute().parents[1]
  sys.exit(pytest.main([__file__, '-p', 'no:cacheprovider', f'--confcutdir={tests_dir}',
                        *sys.argv[1:]]))
