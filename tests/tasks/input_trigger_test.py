"""The trigger as input entries: the task's own trigger, and other values under its mask."""

import pathlib
import sys

import numpy as np
import pytest

from tasks import digits
from tasks import images
from tasks import nbaiot


@pytest.fixture(scope='module')
def task():
  return digits.load_digits_task(num_clients=5, dirichlet_alpha=0.5, seed=0)


def test_the_input_trigger_is_the_pixel_trigger(task):
  x, y = task.test_data
  keep = y != 0
  np.testing.assert_array_equal(task.trigger.apply(x[keep]), task.backdoor_test_data[0])
  np.testing.assert_array_equal(
      task.trigger.apply(x[keep]),
      images.apply_trigger(x[keep], digits.DIGITS_TRIGGER_PARTS, 1.0))
  for got, want in zip(task.backdoor_test_data_for(task.trigger.values), task.backdoor_test_data):
    np.testing.assert_array_equal(got, want)
  assert task.trigger.mask.sum() == 8 and task.trigger.target_label == 0


def test_other_values_change_only_the_masked_entries(task):
  x, y = task.client_data[0]
  values = np.where(task.trigger.mask, 0.25, 0.0).astype(np.float32)
  plain = task.poison_fn(x, y, 0.5, np.random.default_rng(3))
  other = task.poison_fn(x, y, 0.5, np.random.default_rng(3), trigger_values=values)
  np.testing.assert_array_equal(plain[1], other[1])  # the same rows relabelled
  rows = np.flatnonzero(np.any(plain[0] != x, axis=(1, 2, 3)) | (plain[1] != y))
  changed = other[0][rows]
  np.testing.assert_array_equal(changed[:, task.trigger.mask], 0.25)
  np.testing.assert_array_equal(changed[:, ~task.trigger.mask], x[rows][:, ~task.trigger.mask])
  untouched = np.setdiff1d(np.arange(len(x)), rows)
  np.testing.assert_array_equal(other[0][untouched], x[untouched])
  x_bd, y_bd = task.backdoor_test_data_for(values)
  assert np.all(x_bd[:, task.trigger.mask] == 0.25) and np.all(y_bd == 0)
  with pytest.raises(ValueError, match='trigger_part'):
    task.poison_fn(x, y, 0.5, np.random.default_rng(3), trigger_part=1, trigger_values=values)


def test_nbaiot_trigger_matches_its_feature_stamp():
  trigger = nbaiot.input_trigger((1, 3), 4.0, num_features=5)
  x = np.arange(10, dtype=np.float32).reshape(2, 5)
  np.testing.assert_array_equal(trigger.apply(x), nbaiot.apply_trigger(x, (1, 3), 4.0))
  assert trigger.value_range == (-4.0, 4.0) and trigger.target_label == nbaiot.BENIGN_LABEL
  poison = nbaiot.make_poison_fn((1, 3), 4.0)
  y = np.array([1, 1], np.int32)
  xp, yp = poison(x, y, 1.0, np.random.default_rng(0), trigger_values=np.full(5, -2.0))
  np.testing.assert_array_equal(xp[:, [1, 3]], -2.0)
  np.testing.assert_array_equal(xp[:, [0, 2, 4]], x[:, [0, 2, 4]])
  assert np.all(yp == nbaiot.BENIGN_LABEL)


if __name__ == '__main__':
  # `bazel test` runs this file as a py_test: pytest, with tests/conftest.py.
  tests_dir = pathlib.Path(__file__).absolute().parents[1]
  sys.exit(pytest.main([__file__, '-p', 'no:cacheprovider', f'--confcutdir={tests_dir}',
                        *sys.argv[1:]]))
