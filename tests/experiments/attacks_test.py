"""Attacks as hooks in the client work: each attack changes only what it should."""

import numpy as np
import pathlib
import pytest
import sys
import tensorflow as tf
import tensorflow_federated as tff

from experiments import attacks
from experiments import client_work
from experiments.attacks import base
from experiments.attacks import classic
from experiments import config as config_lib


def test_squared_distance_and_projection_match_numpy():
  rng = np.random.default_rng(0)
  v = [rng.normal(size=(3, 2)), rng.normal(size=4)]
  r = [rng.normal(size=(3, 2)), rng.normal(size=4)]
  flat = lambda xs: np.concatenate([np.ravel(x) for x in xs])
  d2 = np.sum((flat(v) - flat(r)) ** 2)
  assert base.squared_distance([tf.constant(x) for x in v],
                                  [tf.constant(x) for x in r]).numpy() == pytest.approx(d2)
  projected = base.project_to_ball([tf.constant(x) for x in v], [tf.constant(x) for x in r], 0.5)
  moved = flat([p.numpy() for p in projected]) - flat(r)
  assert np.linalg.norm(moved) == pytest.approx(0.5)
  np.testing.assert_allclose(moved / 0.5, (flat(v) - flat(r)) / np.sqrt(d2), rtol=1e-6)
  inside = base.project_to_ball([tf.constant(x) for x in v], [tf.constant(x) for x in r], 100.0)
  np.testing.assert_allclose(flat([p.numpy() for p in inside]), flat(v), rtol=1e-6)


def test_build_attack_and_model_replacement_scale():
  with pytest.raises(ValueError, match='--attack'):
    attacks.build_attack(config_lib.ExperimentConfig(attack='flip'))
  with pytest.raises(ValueError, match='--alpha'):
    config_lib.ExperimentConfig(attack='constrain_and_scale', alpha=1.5).validate(20)
  default = attacks.build_attack(config_lib.ExperimentConfig(attack='constrain_and_scale'))
  assert (default.alpha, default.scale_factor) == (0.9, 10 / 3)  # the binary's defaults
  assert attacks.build_attack(config_lib.ExperimentConfig(attack='dba')).trigger_part(5, 4) == 1
  assert attacks.build_attack(config_lib.ExperimentConfig(attack='pgd')).trigger_part(5, 4) is None
  assert base.model_replacement_scale(10, 1.0) == 10.0
  assert base.model_replacement_scale(10, 0.5, attackers_per_round=4) == 5.0


def _keras_model():
  return tf.keras.Sequential([
      tf.keras.layers.Input((3,)),
      tf.keras.layers.Dense(2, kernel_initializer='ones', bias_initializer='zeros')])


def _client_data(malicious: bool):
  x = np.array([[1.0, 0.0, 2.0], [0.0, 1.0, -1.0], [1.0, 1.0, 0.0], [2.0, -1.0, 1.0]],
               np.float32)
  y = np.array([0, 1, 1, 0], np.int32)
  return client_work.flagged_dataset(x, y, malicious).batch(2)


def _run_client_work(attack):
  element_spec = _client_data(False).element_spec
  work = client_work.build_client_work(_keras_model, element_spec, 0.1, attack)
  model = _keras_model()
  weights = tff.learning.models.ModelWeights(
      trainable=[v.numpy() for v in model.trainable_variables], non_trainable=[])
  out = work.next(work.initialize(), [weights, weights], [_client_data(False), _client_data(True)])
  (benign, benign_flag), (bad, bad_flag) = [r.update for r in out.result]
  flat = lambda u: np.concatenate([np.ravel(t) for t in u])
  assert (benign_flag, bad_flag) == (0, 1)
  assert out.measurements['num_malicious'] == 1 and out.measurements['num_examples'] == 8
  return flat(benign), flat(bad)


def test_data_poisoning_client_trains_like_a_benign_one_on_the_same_data():
  benign, bad = _run_client_work(classic.DataPoisoning())
  assert np.linalg.norm(benign) > 0
  np.testing.assert_allclose(bad, benign, rtol=1e-6)


def test_constrain_and_scale_scales_the_update_by_gamma():
  benign, bad = _run_client_work(
      classic.ConstrainAndScale(alpha=1.0, scale_factor=7.0))
  np.testing.assert_allclose(bad, 7.0 * benign, rtol=1e-5)
  # With the anomaly loss the attacker stays closer to the global model before scaling.
  _, constrained = _run_client_work(
      classic.ConstrainAndScale(alpha=0.5, scale_factor=1.0))
  assert np.linalg.norm(constrained) < np.linalg.norm(benign)


def test_pgd_keeps_the_attacker_inside_the_ball():
  benign, bad = _run_client_work(classic.ProjectedGradientDescent(radius=0.01))
  assert np.linalg.norm(benign) > 0.05
  assert np.linalg.norm(bad) <= 0.01 * (1 + 1e-5)


def test_scaled_pgd_is_pgd_times_gamma():
  _, projected = _run_client_work(classic.ProjectedGradientDescent(radius=0.01))
  _, scaled = _run_client_work(classic.ScaledProjectedGradientDescent(radius=0.01,
                                                                      scale_factor=5.0))
  np.testing.assert_allclose(scaled, 5.0 * projected, rtol=1e-5)
  config = config_lib.ExperimentConfig(attack='pgd_scaled', clients_per_round=10)
  attack = attacks.build_attack(config)
  assert attack.scale_factor == pytest.approx(10 / 3) and attack.radius == config.pgd_radius


def test_models_with_sparse_gradients_train():
  """Embedding layers give IndexedSlices gradients (the text task's LSTM has one)."""
  def embedding_model():
    return tf.keras.Sequential([tf.keras.layers.Input((4,), dtype=tf.int32),
                                tf.keras.layers.Embedding(6, 3), tf.keras.layers.Flatten(),
                                tf.keras.layers.Dense(2)])
  x = np.array([[1, 2, 3, 4], [0, 1, 1, 2]], np.int32)
  y = np.array([0, 1], np.int32)
  data = client_work.flagged_dataset(x, y, False).batch(2)
  work = client_work.build_client_work(embedding_model, data.element_spec, 0.5,
                                   base.Attack())
  model = embedding_model()
  weights = tff.learning.models.ModelWeights(
      trainable=[v.numpy() for v in model.trainable_variables], non_trainable=[])
  (update, flag), = [r.update for r in work.next(work.initialize(), [weights], [data]).result]
  embedding_update = np.asarray(update[0])
  assert flag == 0
  assert (np.abs(embedding_update[:5]).sum(axis=1) > 0).all()  # looked-up rows moved
  np.testing.assert_array_equal(embedding_update[5], 0.0)  # row 5 was never looked up


if __name__ == '__main__':
  # `bazel test` runs this file as a py_test: pytest, with tests/conftest.py.
  tests_dir = pathlib.Path(__file__).absolute().parents[1]
  sys.exit(pytest.main([__file__, '-p', 'no:cacheprovider', f'--confcutdir={tests_dir}',
                        *sys.argv[1:]]))
