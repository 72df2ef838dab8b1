"""Shared accuracy and row-selection helpers of `tasks.task`."""

import numpy as np
import pathlib
import pytest
import sys
import tensorflow as tf

from tasks import task


def test_accuracy_from_logits_class_labels():
  logits = np.array([[2., 1.], [0., 3.], [5., 1.], [0., 1.]])
  assert task.accuracy_from_logits(logits, np.array([0, 1, 1, 0])) == 0.5


def test_accuracy_from_logits_sequences_skip_padding():
  # Predictions per position: argmax of one-hot logits.
  pred = np.array([[1, 2, 3, 0], [4, 4, 4, 4]])
  y = np.array([[1, 2, 5, 0], [4, 0, 0, 1]])  # counted: 3 + 2 positions; right: 2 + 1.
  logits = tf.one_hot(pred, 6).numpy()
  assert task.accuracy_from_logits(logits, y) == pytest.approx(3 / 5)
  assert np.isnan(task.accuracy_from_logits(logits, np.zeros_like(y)))


def test_whole_target_accuracy_counts_rows_right_everywhere():
  pred = np.array([[1, 2, 3, 0], [4, 4, 4, 4], [0, 0, 0, 0], [7, 7, 7, 7]])
  y = np.array([[1, 2, 5, 0], [4, 0, 0, 4], [0, 0, 0, 0], [0, 7, 0, 0]])
  logits = tf.one_hot(pred, 8).numpy()
  # Row 2 has no label and is skipped; rows 1 and 3 are right at every label.
  assert task.whole_target_accuracy_from_logits(logits, y) == pytest.approx(2 / 3)
  assert task.accuracy_from_logits(logits, y) == pytest.approx(5 / 6)
  assert np.isnan(task.whole_target_accuracy_from_logits(logits, np.zeros_like(y)))


def test_backdoor_accuracy_uses_the_task_metric():
  model = tf.keras.Sequential([tf.keras.layers.InputLayer(input_shape=(2,), dtype=tf.int32),
                               tf.keras.layers.Lambda(lambda x: tf.one_hot(x, 4))])
  x = np.array([[1, 2], [3, 3]], np.int32)  # predicts x itself
  y = np.array([[1, 3], [3, 3]], np.int32)
  kw = dict(name='t', client_data=[], test_data=(x, y), backdoor_test_data=(x, y),
            model_fn=None, poison_fn=None)
  assert task.Task(**kw).backdoor_accuracy(model) == pytest.approx(3 / 4)
  whole = task.Task(backdoor_metric=task.whole_target_accuracy_from_logits, **kw)
  assert whole.backdoor_accuracy(model) == pytest.approx(1 / 2)
  empty = task.Task(**dict(kw, backdoor_test_data=(x[:0], y[:0])))
  assert np.isnan(empty.backdoor_accuracy(model))


def test_accuracy_with_keras_model_in_batches():
  model = tf.keras.Sequential([tf.keras.layers.InputLayer(input_shape=(1,)),
                               tf.keras.layers.Lambda(lambda x: tf.concat([-x, x], axis=1))])
  x = np.array([[-1.], [2.], [3.], [-4.], [5.]], np.float32)  # predicts [0, 1, 1, 0, 1]
  y = np.array([0, 1, 0, 0, 0], np.int32)
  assert task.accuracy(model, x, y, batch_size=2) == pytest.approx(3 / 5)


def test_choose_rows_exact_count_and_bad_rate():
  rng = np.random.default_rng(0)
  rows = task.choose_rows(np.arange(10, 30), 0.3, 20, rng)
  assert len(rows) == 6 and len(set(rows.tolist())) == 6
  assert rows.min() >= 10 and rows.max() < 30
  with pytest.raises(ValueError, match='rate'):
    task.choose_rows(np.arange(5), 1.5, 5, rng)
  with pytest.raises(ValueError, match='only 2'):
    task.choose_rows(np.arange(2), 0.5, 10, rng)


def test_check_trigger_part():
  task.check_trigger_part(None, 1)
  task.check_trigger_part(3, 4)
  for bad in (4, -1, 1.0):
    with pytest.raises(ValueError, match='trigger_part'):
      task.check_trigger_part(bad, 4)


if __name__ == '__main__':
  # `bazel test` runs this file as a py_test: pytest, with tests/conftest.py.
  tests_dir = pathlib.Path(__file__).absolute().parents[1]
  sys.exit(pytest.main([__file__, '-p', 'no:cacheprovider', f'--confcutdir={tests_dir}',
                        *sys.argv[1:]]))
