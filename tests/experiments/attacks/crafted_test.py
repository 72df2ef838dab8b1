"""The harness side of crafted attacks: local SGD as a client runs it, and the override."""

import pathlib
import sys

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_federated as tff

from experiments import client_work
from experiments.attacks import crafted


def small_model():
  return tf.keras.Sequential([tf.keras.layers.Input((3,)),
                              tf.keras.layers.Dense(2, kernel_initializer='glorot_uniform')])


def data(n=8, seed=0):
  rng = np.random.default_rng(seed)
  return rng.normal(size=(n, 3)).astype(np.float32), rng.integers(0, 2, n).astype(np.int32)


def test_one_full_batch_step_is_g_minus_lr_times_the_gradient():
  tf.keras.utils.set_random_seed(0)
  start = [w.numpy() for w in small_model().trainable_variables]
  x, y = data()
  trainer = crafted.LocalTrainer(small_model, learning_rate=0.3, epochs=1, batch_size=len(x))
  update = trainer.update(start, x, y, np.random.default_rng(0))
  # Oracle: the softmax cross-entropy gradient in NumPy.
  kernel, bias = start
  logits = x @ kernel + bias
  p = np.exp(logits - logits.max(1, keepdims=True))
  p /= p.sum(1, keepdims=True)
  p[np.arange(len(y)), y] -= 1.0
  grad_kernel, grad_bias = x.T @ p / len(y), p.mean(0)
  np.testing.assert_allclose(update[0], 0.3 * grad_kernel, rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(update[1], 0.3 * grad_bias, rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(trainer.mean_gradient(start, x, y)[0], grad_kernel, rtol=1e-4,
                             atol=1e-6)


def test_gradient_mask_and_projection_apply_at_every_step():
  start = [w.numpy() for w in small_model().trainable_variables]
  x, y = data(40)
  trainer = crafted.LocalTrainer(small_model, 0.5, epochs=3, batch_size=8)
  mask = [np.array([[1, 0], [0, 1], [1, 1]], np.float32), np.array([0, 1], np.float32)]
  update = trainer.update(start, x, y, np.random.default_rng(1), gradient_mask=mask)
  assert np.all(update[0][mask[0] == 0] == 0) and update[1][0] == 0
  assert np.abs(update[0][mask[0] == 1]).min() > 0
  radius = 0.05
  projected = trainer.update(start, x, y, np.random.default_rng(1),
                             after_step=crafted.ball_projection(start, radius))
  assert crafted.norm(projected) <= radius * (1 + 1e-5)
  assert crafted.norm(trainer.update(start, x, y, np.random.default_rng(1))) > 2 * radius


class _SendsOnes(crafted.CraftedAttack):
  pass


def test_a_crafted_update_replaces_training_and_is_flagged():
  x, y = data()
  spec = client_work.flagged_dataset(x[:1], y[:1], False).batch(4).element_spec
  work = client_work.build_client_work(small_model, spec, 0.1, _SendsOnes())
  model = small_model()
  weights = tff.learning.models.ModelWeights(
      trainable=[v.numpy() for v in model.trainable_variables], non_trainable=[])
  ones = [np.ones_like(w) for w in weights.trainable]
  benign = client_work.crafted_client_data(
      client_work.flagged_dataset(x, y, False).batch(4), weights.trainable)
  attacker = client_work.crafted_client_data(
      client_work.flagged_dataset(x[:0], y[:0], False).batch(4), weights.trainable, ones)
  out = work.next(work.initialize(), [weights, weights], [benign, attacker])
  (benign_update, benign_flag), (sent, flag) = [r.update for r in out.result]
  assert (benign_flag, flag) == (0, 1) and out.measurements['num_malicious'] == 1
  for s, o in zip(sent, ones):
    np.testing.assert_array_equal(s, o)
  trained = crafted.LocalTrainer(small_model, 0.1, 1, 4)
  assert crafted.norm(benign_update) > 0  # the benign client trained
  assert out.measurements['num_examples'] == len(x)
  del trained


def test_flat_and_unflat_round_trip():
  like = [np.zeros((2, 3), np.float32), np.zeros(4, np.float32)]
  vector = np.arange(10.0)
  parts = crafted.unflat(vector, like)
  assert [p.shape for p in parts] == [(2, 3), (4,)]
  np.testing.assert_array_equal(crafted.flat(parts), vector)
  assert crafted.norm(parts) == pytest.approx(np.linalg.norm(vector))


if __name__ == '__main__':
  # `bazel test` runs this file as a py_test: pytest, with tests/conftest.py.
  tests_dir = pathlib.Path(__file__).absolute().parents[2]
  sys.exit(pytest.main([__file__, '-p', 'no:cacheprovider', f'--confcutdir={tests_dir}',
                        *sys.argv[1:]]))
