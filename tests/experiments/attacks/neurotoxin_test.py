"""neurotoxin: the poisoned update moves only coordinates the benign gradient uses least."""

import pathlib
import sys

import numpy as np
import pytest
import tensorflow as tf

import attack_views
from experiments import client_work
from experiments import config as config_lib
from experiments.attacks import crafted
from experiments.attacks import neurotoxin


def benign_gradient(task, weights, x, y, batch_size):
  """Oracle: the task loss's gradient at G, averaged over the batches, with a plain tape."""
  model = task.model_fn()
  for v, w in zip(model.trainable_variables, weights):
    v.assign(w)
  total = None
  starts = range(0, len(x), batch_size)
  for start in starts:
    with tf.GradientTape() as tape:
      loss = client_work.task_loss(tf.constant(y[start:start + batch_size]),
                                   model(x[start:start + batch_size], training=True))
    grads = [g.numpy() for g in tape.gradient(loss, model.trainable_variables)]
    total = grads if total is None else [t + g for t, g in zip(total, grads)]
  return np.abs(crafted.flat(total)) / len(starts)


def moves_only_masked(update, frozen: np.ndarray) -> bool:
  """The defining property: no change on the coordinates the mask froze."""
  return bool(np.all(crafted.flat(update)[frozen] == 0.0))


def test_the_mask_is_the_bottom_of_the_benign_gradient_and_the_update_respects_it():
  task = attack_views.digits_task()
  config = config_lib.ExperimentConfig(attack='neurotoxin', neurotoxin_keep=0.8)
  view = attack_views.view(task, config)
  attack = neurotoxin.Neurotoxin(keep=0.8, radius_fraction=0.7)
  updates = attack.craft(view)
  for client_id in attack_views.ATTACKERS:
    x, y = view.data[client_id]
    magnitude = benign_gradient(task, view.global_weights, x, y, config.batch_size)
    kept = crafted.flat(attack.masks[client_id]) == 1.0
    assert kept.mean() == pytest.approx(0.8, abs=1e-4)
    # Every kept coordinate's benign gradient is at most every frozen one's.
    assert magnitude[kept].max() <= magnitude[~kept].min() * (1 + 1e-4) + 1e-9
    assert moves_only_masked(updates[client_id], ~kept)
    assert np.count_nonzero(crafted.flat(updates[client_id])[kept]) > 0.1 * kept.sum()
    assert crafted.norm(updates[client_id]) <= 0.7 * attack.bounds[client_id] * (1 + 1e-5)
    # A plain data-poisoning client changes the frozen coordinates too.
    poisoning = attack_views.data_poisoning_update(view, client_id)
    assert not moves_only_masked(poisoning, ~kept)


def test_bottom_mask_by_hand():
  mask = neurotoxin.bottom_mask([np.array([[3.0, -0.5], [0.1, -2.0]]), np.array([1.0])], 0.6)
  np.testing.assert_array_equal(mask[0], [[0, 1], [1, 0]])
  np.testing.assert_array_equal(mask[1], [1])


if __name__ == '__main__':
  # `bazel test` runs this file as a py_test: pytest, with tests/conftest.py.
  tests_dir = pathlib.Path(__file__).absolute().parents[2]
  sys.exit(pytest.main([__file__, '-p', 'no:cacheprovider', f'--confcutdir={tests_dir}',
                        *sys.argv[1:]]))
