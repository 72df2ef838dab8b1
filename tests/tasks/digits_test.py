"""Digits task: stratified split, Dirichlet clients, DBA corner trigger, accuracies, model."""

import numpy as np
import pathlib
import pytest
import sys
import tensorflow as tf

from tasks import digits
from tasks import images


@pytest.fixture(scope='module')
def digits_task():
  return digits.load_digits_task(num_clients=10, dirichlet_alpha=0.5, seed=0)


def _label_skew(task, num_classes=10):
  """Mean total-variation distance of client label mixes from the global mix."""
  y_all = np.concatenate([y for _, y in task.client_data])
  overall = np.bincount(y_all, minlength=num_classes) / len(y_all)
  tv = [0.5 * np.abs(np.bincount(y, minlength=num_classes) / len(y) - overall).sum()
        for _, y in task.client_data]
  return float(np.mean(tv))


def test_digits_split_and_partition(digits_task):
  assert digits_task.name == 'digits' and len(digits_task.client_data) == 10
  x_test, y_test = digits_task.test_data
  sizes = [len(x) for x, _ in digits_task.client_data]
  assert len(x_test) == 359 and sum(sizes) == 1797 - 359
  assert min(sizes) >= 5
  # Stratified test split: every class holds round(0.2 * n_c) examples.
  assert np.all(np.abs(np.bincount(y_test, minlength=10) - 36) <= 1)
  for x, y in digits_task.client_data:
    assert x.dtype == np.float32 and y.dtype == np.int32 and x.shape[1:] == (8, 8, 1)
    assert x.min() >= 0.0 and x.max() <= 1.0
  # Clients and test set are disjoint and together are the whole data set.
  rows = np.concatenate([x.reshape(len(x), -1) for x, _ in digits_task.client_data] +
                        [x_test.reshape(len(x_test), -1)])
  from sklearn.datasets import load_digits
  ref = load_digits().data / 16.0
  key = lambda a: sorted(map(bytes, np.round(a * 16).astype(np.uint8)))
  assert key(rows) == key(ref)


def test_dirichlet_skew_is_measurable():
  skewed = digits.load_digits_task(num_clients=10, dirichlet_alpha=0.1, seed=1)
  iid = digits.load_digits_task(num_clients=10, dirichlet_alpha=1000.0, seed=1)
  assert _label_skew(skewed) > 0.5
  assert _label_skew(iid) < 0.1
  assert min(len(x) for x, _ in skewed.client_data) >= 5


def test_poison_exact_rate_and_full_trigger(digits_task):
  x, y = digits_task.client_data[0]
  x = x[:40]
  y = y[:40]
  x_orig, y_orig = x.copy(), y.copy()
  xp, yp = digits_task.poison_fn(x, y, 0.25, np.random.default_rng(0))
  assert np.array_equal(x, x_orig) and np.array_equal(y, y_orig)  # inputs untouched
  rows, cols = images.trigger_pixels(digits.DIGITS_TRIGGER_PARTS)
  stamped = np.all(xp[:, rows, cols, 0] == 1.0, axis=1)
  changed = np.any(xp != x, axis=(1, 2, 3)) | (yp != y)
  assert stamped.sum() == 10  # round(0.25 * 40) rows, none stamped by chance
  assert not np.any(changed & ~stamped)  # only stamped rows change
  assert np.all(yp[stamped] == 0) and np.array_equal(yp[~stamped], y[~stamped])
  # Outside the trigger, pixels are unchanged.
  mask = np.ones((8, 8), bool)
  mask[rows, cols] = False
  assert np.array_equal(xp[:, mask], x[:, mask])
  assert np.array_equal(digits_task.poison_fn(x, y, 0.0, np.random.default_rng(0))[0], x)


def test_dba_parts_touch_only_their_pixels_and_union_is_full_trigger(digits_task):
  assert digits_task.num_trigger_parts == 4
  x = np.zeros((6, 8, 8, 1), np.float32)
  y = np.full(6, 5, np.int32)
  union = np.zeros_like(x)
  for part in range(4):
    xp, yp = digits_task.poison_fn(x, y, 1.0, np.random.default_rng(part), trigger_part=part)
    lit = set(zip(*np.nonzero(xp[0, :, :, 0])))
    assert lit == set(digits.DIGITS_TRIGGER_PARTS[part])
    assert np.all(yp == 0)
    union = np.maximum(union, xp)
  full, _ = digits_task.poison_fn(x, y, 1.0, np.random.default_rng(9))
  assert np.array_equal(union, full)
  assert int(full[0].sum()) == 8
  with pytest.raises(ValueError, match='trigger_part'):
    digits_task.poison_fn(x, y, 1.0, np.random.default_rng(0), trigger_part=4)


def test_backdoor_test_data_excludes_target_rows(digits_task):
  x_test, y_test = digits_task.test_data
  x_bd, y_bd = digits_task.backdoor_test_data
  keep = y_test != 0
  assert len(x_bd) == keep.sum() == len(y_test) - 36
  assert np.all(y_bd == 0) and y_bd.dtype == np.int32
  rows, cols = images.trigger_pixels(digits.DIGITS_TRIGGER_PARTS)
  assert np.all(x_bd[:, rows, cols, 0] == 1.0)
  mask = np.ones((8, 8), bool)
  mask[rows, cols] = False
  assert np.array_equal(x_bd[:, mask], x_test[keep][:, mask])


def test_accuracies_of_a_hand_made_model(digits_task):
  # Predicts 0 when the top-left pixel is lit, else 3.
  def logits(x):
    lit = tf.cast(x[:, 0, 0, 0] >= 1.0, tf.int32)
    return tf.one_hot(lit * 0 + (1 - lit) * 3, 10)
  model = tf.keras.Sequential([tf.keras.layers.InputLayer(input_shape=(8, 8, 1)),
                               tf.keras.layers.Lambda(logits)])
  y_test = digits_task.test_data[1]
  assert digits_task.main_accuracy(model) == pytest.approx(np.mean(y_test == 3))
  assert digits_task.backdoor_accuracy(model) == 1.0


def test_digits_model_learns_main_task_and_backdoor(digits_task):
  tf.keras.utils.set_random_seed(0)
  rng = np.random.default_rng(0)
  parts = [digits_task.poison_fn(x, y, 0.1, rng) for x, y in digits_task.client_data]
  x = np.concatenate([p[0] for p in parts])
  y = np.concatenate([p[1] for p in parts])
  model = digits_task.model_fn()
  assert model.count_params() == 38282
  model.compile(tf.keras.optimizers.Adam(0.01),
                tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True))
  model.fit(x, y, epochs=15, batch_size=64, verbose=0)
  assert digits_task.main_accuracy(model) > 0.85
  assert digits_task.backdoor_accuracy(model) > 0.8


if __name__ == '__main__':
  # `bazel test` runs this file as a py_test: pytest, with tests/conftest.py.
  tests_dir = pathlib.Path(__file__).absolute().parents[1]
  sys.exit(pytest.main([__file__, '-p', 'no:cacheprovider', f'--confcutdir={tests_dir}',
                        *sys.argv[1:]]))
