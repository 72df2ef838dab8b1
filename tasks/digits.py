"""Offline image task: scikit-learn's 8x8 handwritten digits, non-IID clients, DBA corner trigger.

Needs no download (the images ship with scikit-learn), so it is the default demo and test task.
"""

import numpy as np
import tensorflow as tf

from tasks import images
from tasks import task

# Two pixels in each of the four corners (columns 0 and 7 are blank in ~99% of
# the images).
DIGITS_TRIGGER_PARTS = (
    ((0, 0), (1, 0)),
    ((0, 7), (1, 7)),
    ((6, 0), (7, 0)),
    ((6, 7), (7, 7)),
)


def create_digits_cnn(num_classes: int = 10) -> tf.keras.Model:
  """Small CNN for [8, 8, 1] images; outputs logits.

  conv 16 3x3 -> conv 32 3x3 -> dense 64 -> dense `num_classes`, 'valid'
  padding; 38,282 parameters with 10 classes.
  """
  return tf.keras.Sequential([
      tf.keras.layers.InputLayer(input_shape=(8, 8, 1)),
      tf.keras.layers.Conv2D(16, 3, activation='relu'),
      tf.keras.layers.Conv2D(32, 3, activation='relu'),
      tf.keras.layers.Flatten(),
      tf.keras.layers.Dense(64, activation='relu'),
      tf.keras.layers.Dense(num_classes),
  ])


def load_digits_task(*,
                     num_clients: int,
                     dirichlet_alpha: float,
                     seed: int,
                     target_label: int = 0,
                     test_fraction: float = 0.2,
                     min_examples_per_client: int = 5,
                     trigger_parts: images.TriggerParts = DIGITS_TRIGGER_PARTS,
                     trigger_value: float = 1.0) -> task.Task:
  """Offline image task on scikit-learn's 8x8 digits, non-IID over clients.

  The 1,797 images (values 0..16 scaled to [0, 1]) are split train/test per
  class, then the train split is spread over clients with a Dirichlet(alpha)
  label mix per client.
  """
  from sklearn import datasets  # pylint: disable=g-import-not-at-top
  digits = datasets.load_digits()
  x = (digits.images / 16.0).astype(np.float32)[..., np.newaxis]
  y = digits.target.astype(np.int32)
  if not 0 <= target_label < 10:
    raise ValueError(f'target_label must be in [0, 10), got {target_label!r}.')
  images._check_trigger(trigger_parts, 8, 8)  # pylint: disable=protected-access
  rng = np.random.default_rng(seed)
  train_idx, test_idx = images.stratified_split(y, test_fraction, rng)
  shards = images.dirichlet_partition(y[train_idx], num_clients, dirichlet_alpha, rng,
                                      min_examples=min_examples_per_client)
  client_data = [(x[train_idx][s], y[train_idx][s]) for s in shards]
  x_test, y_test = x[test_idx], y[test_idx]
  return task.Task(
      name='digits',
      client_data=client_data,
      test_data=(x_test, y_test),
      backdoor_test_data=images.backdoor_test_set(x_test, y_test, trigger_parts, trigger_value,
                                                  target_label),
      model_fn=create_digits_cnn,
      poison_fn=images.make_poison_fn(trigger_parts, trigger_value, target_label),
      num_trigger_parts=len(trigger_parts),
      trigger=images.input_trigger(trigger_parts, trigger_value, target_label, (8, 8, 1)),
      info=dict(num_classes=10, target_label=target_label, trigger_parts=trigger_parts,
                trigger_value=trigger_value, dirichlet_alpha=dirichlet_alpha))
