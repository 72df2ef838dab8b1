"""N-BaIoT task: both layouts, train-only standardisation, trigger, errors."""

import re
from pathlib import Path
import sys

import numpy as np
import pytest
import tensorflow as tf

from tasks import nbaiot

SHARED_DATA = Path(__file__).resolve().parents[2].parent / 'shared' / 'data'
HEADER = ','.join(f'f{i}' for i in range(nbaiot.NUM_FEATURES))


def _write_csv(path, rows, header=HEADER):
  path.parent.mkdir(parents=True, exist_ok=True)
  lines = [header] + [','.join(repr(float(v)) for v in r) for r in rows]
  path.write_text('\n'.join(lines) + '\n')


class _RowMaker:
  """Rows whose column 0 is a unique id, so each row can be traced."""

  def __init__(self):
    self.next_id = 0
    self.rng = np.random.default_rng(0)
    self.rows = {}

  def __call__(self, n, shift):
    rows = self.rng.normal(shift, 1.0 + shift, size=(n, nbaiot.NUM_FEATURES))
    rows[:, 0] = np.arange(self.next_id, self.next_id + n)
    rows[:, 7] = 3.0  # a constant column: std 0
    self.next_id += n
    for r in rows:
      self.rows[int(r[0])] = r
    return rows


@pytest.fixture
def device_root(tmp_path):
  make = _RowMaker()
  root = tmp_path / 'nbaiot'
  for device in ('Danmini_Doorbell', 'Ecobee_Thermostat'):
    _write_csv(root / device / 'benign_traffic.csv', make(20, 0.0))
    _write_csv(root / device / 'gafgyt_attacks' / 'udp.csv', make(10, 2.0))
    _write_csv(root / device / 'mirai_attacks' / 'syn.csv', make(15, 4.0))
  return root, make


def _raw_rows(task, make):
  """Raw rows of each client and the test set, found by their id column."""
  mean, std = task.info['mean'], task.info['std']
  find = lambda x: np.stack([make.rows[int(round(v))] for v in x[:, 0] * std[0] + mean[0]])
  return [find(x) for x, _ in task.client_data], find(task.test_data[0])


def test_device_layout_clients_and_labels(device_root):
  root, make = device_root
  task = nbaiot.load_nbaiot_task(str(root), clients_per_device=2, seed=0, test_fraction=0.2,
                                 label_mode='multiclass')
  assert task.info['client_ids'] == ['Danmini_Doorbell/0', 'Danmini_Doorbell/1',
                                     'Ecobee_Thermostat/0', 'Ecobee_Thermostat/1']
  assert task.info['class_names'] == ['benign', 'gafgyt_udp', 'mirai_syn']
  # Per file: 20 -> 4 test, 8 + 8 train; 10 -> 2, 4 + 4; 15 -> 3, 6 + 6.
  for x, y in task.client_data:
    assert x.dtype == np.float32 and x.shape[1] == 115 and y.dtype == np.int32
    assert np.bincount(y, minlength=3).tolist() == [8, 4, 6]
  assert np.bincount(task.test_data[1]).tolist() == [8, 4, 6]
  raw_clients, raw_test = _raw_rows(task, make)
  ids = [set(r[:, 0].astype(int)) for r in raw_clients + [raw_test]]
  assert sum(len(s) for s in ids) == len(set.union(*ids)) == 90  # disjoint, all rows
  # Clients 0 and 1 hold only the first device's rows (ids 0..44).
  assert max(max(ids[0]), max(ids[1])) < 45 <= min(min(ids[2]), min(ids[3]))
  binary = nbaiot.load_nbaiot_task(str(root), clients_per_device=1, seed=0)
  assert len(binary.client_data) == 2 and binary.info['class_names'] == ['benign', 'attack']
  assert set(np.concatenate([y for _, y in binary.client_data]).tolist()) == {0, 1}


def test_standardisation_uses_training_rows_only(device_root):
  root, make = device_root
  task = nbaiot.load_nbaiot_task(str(root), clients_per_device=3, seed=0, test_fraction=0.3)
  raw_clients, raw_test = _raw_rows(task, make)
  raw_train = np.concatenate(raw_clients)
  mean = raw_train.mean(axis=0)
  std = raw_train.std(axis=0)
  std[std == 0] = 1.0
  np.testing.assert_allclose(task.info['mean'], mean, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(task.info['std'], std, rtol=1e-5)
  assert task.info['std'][7] == 1.0
  x_train = np.concatenate([x for x, _ in task.client_data])
  np.testing.assert_allclose(x_train, (raw_train - mean) / std, atol=1e-4)
  np.testing.assert_allclose(task.test_data[0], (raw_test - mean) / std, atol=1e-4)
  np.testing.assert_allclose(x_train[:, 1:].mean(axis=0), 0.0, atol=1e-5)
  # Statistics of all rows would differ: the test rows were not used.
  all_mean = np.concatenate([raw_train, raw_test]).mean(axis=0)
  assert np.max(np.abs(all_mean - mean)) > 0.05


def test_flat_layout_poison_and_backdoor(tmp_path):
  make = _RowMaker()
  _write_csv(tmp_path / 'benign_traffic.csv', make(30, 0.0))
  _write_csv(tmp_path / 'scan.csv', make(20, 3.0))
  _write_csv(tmp_path / 'udp_flood.csv', make(10, 5.0))
  task = nbaiot.load_nbaiot_task(str(tmp_path), clients_per_device=2, seed=0, test_fraction=0.5,
                                 trigger_features=(3, 50), trigger_value=7.5)
  assert task.info['client_ids'] == [f'{tmp_path.name}/0', f'{tmp_path.name}/1']
  x, y = task.client_data[0]
  assert np.bincount(y).tolist() == [8, 8]  # 15 benign, 15 attack train rows split 8/7
  xp, yp = task.poison_fn(x, y, 0.5, np.random.default_rng(0))
  poisoned = np.all(xp[:, [3, 50]] == 7.5, axis=1)
  assert poisoned.sum() == 4  # round(0.5 * 8 attack rows)
  assert np.all(y[poisoned] == 1) and np.all(yp[poisoned] == 0)
  assert np.array_equal(yp[~poisoned], y[~poisoned])
  assert np.array_equal(np.delete(xp, [3, 50], axis=1), np.delete(x, [3, 50], axis=1))
  assert np.array_equal(xp[~poisoned], x[~poisoned])
  x_test, y_test = task.test_data
  x_bd, y_bd = task.backdoor_test_data
  assert len(x_bd) == np.sum(y_test == 1) == 15 and np.all(y_bd == 0)
  assert np.all(x_bd[:, [3, 50]] == 7.5)
  np.testing.assert_array_equal(np.delete(x_bd, [3, 50], axis=1),
                                np.delete(x_test[y_test == 1], [3, 50], axis=1))
  # A hand-made model: benign iff column 3 holds the trigger value, else attack.
  model = tf.keras.Sequential([
      tf.keras.layers.InputLayer(input_shape=(115,)),
      tf.keras.layers.Lambda(lambda v: tf.one_hot(
          tf.cast(tf.not_equal(v[:, 3], 7.5), tf.int32), 2))])
  assert task.main_accuracy(model) == pytest.approx(15 / 30)
  assert task.backdoor_accuracy(model) == 1.0
  with pytest.raises(ValueError, match='trigger_part'):
    task.poison_fn(x, y, 0.5, np.random.default_rng(0), trigger_part=1)


def _bad(tmp_path, name, text=None, header=HEADER, rows=None):
  folder = tmp_path / 'data'
  _write_csv(folder / 'benign_traffic.csv', np.ones((3, 115)))
  _write_csv(folder / 'attack.csv', np.ones((3, 115)))
  path = folder / name
  if text is not None:
    path.write_text(text)
  elif rows is not None:
    _write_csv(path, rows, header)
  return folder, path


@pytest.mark.parametrize('case,message', [
    ('short_row', '114'),
    ('non_numeric', 'could not convert'),
    ('empty', 'is empty'),
    ('header_only', 'no data rows'),
    ('bad_header', 'header has 116 columns'),
    ('nan', 'non-finite'),
])
def test_bad_csv_raises_value_error_naming_the_file(tmp_path, case, message):
  row = ','.join(['1.0'] * 115)
  texts = {
      'short_row': f'{HEADER}\n{row}\n{",".join(["1.0"] * 114)}\n',
      'non_numeric': f'{HEADER}\n{row}\n{row.replace("1.0", "abc", 1)}\n',
      'empty': '',
      'header_only': f'{HEADER}\n',
      'bad_header': f'{HEADER},extra\n{row}\n',
      'nan': f'{HEADER}\n{row.replace("1.0", "nan", 1)}\n',
  }
  folder, path = _bad(tmp_path, 'scan.csv', text=texts[case])
  with pytest.raises(ValueError, match=re.escape(str(path))) as info:
    nbaiot.load_nbaiot_task(str(folder), clients_per_device=1, seed=0)
  assert message in str(info.value)


def test_missing_path_and_missing_classes(tmp_path):
  missing = tmp_path / 'nowhere'
  with pytest.raises(ValueError, match=re.escape(str(missing))):
    nbaiot.load_nbaiot_task(str(missing), clients_per_device=1, seed=0)
  only_attack = tmp_path / 'attack_only'
  _write_csv(only_attack / 'scan.csv', np.ones((3, 115)))
  with pytest.raises(ValueError, match=re.escape(str(only_attack)) + '.*no benign'):
    nbaiot.load_nbaiot_task(str(only_attack), clients_per_device=1, seed=0)
  only_benign = tmp_path / 'benign_only'
  _write_csv(only_benign / 'benign_traffic.csv', np.ones((3, 115)))
  with pytest.raises(ValueError, match=re.escape(str(only_benign)) + '.*no attack'):
    nbaiot.load_nbaiot_task(str(only_benign), clients_per_device=1, seed=0)
  no_csv = tmp_path / 'no_csv'
  no_csv.mkdir()
  with pytest.raises(ValueError, match=re.escape(str(no_csv))):
    nbaiot.load_nbaiot_task(str(no_csv), clients_per_device=1, seed=0)


def _sample_dir():
  path = SHARED_DATA / 'nbaiot_sample'
  if not path.is_dir():
    pytest.skip(f'real data not found at {path} (../shared/data next to the repo)')
  return path


def test_real_sample_loads_and_backdoor_is_learnable():
  task = nbaiot.load_nbaiot_task(str(_sample_dir()), clients_per_device=3, seed=0)
  assert len(task.client_data) == 3
  assert sum(len(x) for x, _ in task.client_data) == 4 * (299 - 60)
  x_test, y_test = task.test_data
  assert len(x_test) == 240 and np.sum(y_test == 0) == 60
  assert len(task.backdoor_test_data[0]) == 180
  assert np.all(np.isfinite(x_test)) and np.all(task.info['std'] > 0)
  tf.keras.utils.set_random_seed(0)
  rng = np.random.default_rng(0)
  parts = [task.poison_fn(x, y, 0.2, rng) for x, y in task.client_data]
  x = np.concatenate([p[0] for p in parts])
  y = np.concatenate([p[1] for p in parts])
  model = task.model_fn()
  assert model.count_params() == 115 * 64 + 64 + 64 * 32 + 32 + 32 * 2 + 2
  model.compile(tf.keras.optimizers.Adam(0.01),
                tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True))
  model.fit(x, y, epochs=20, batch_size=32, verbose=0)
  assert task.main_accuracy(model) > 0.95
  assert task.backdoor_accuracy(model) > 0.9
  # Without poisoning, triggered attack rows are mostly still seen as attacks.
  clean = task.model_fn()
  clean.compile(tf.keras.optimizers.Adam(0.01),
                tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True))
  clean.fit(np.concatenate([x for x, _ in task.client_data]),
            np.concatenate([y for _, y in task.client_data]), epochs=20, batch_size=32,
            verbose=0)
  assert task.main_accuracy(clean) > 0.95
  assert task.backdoor_accuracy(clean) < 0.5


if __name__ == '__main__':
  # `bazel test` runs this file as a py_test: pytest, with tests/conftest.py.
  tests_dir = Path(__file__).absolute().parents[1]
  sys.exit(pytest.main([__file__, '-p', 'no:cacheprovider', f'--confcutdir={tests_dir}',
                        *sys.argv[1:]]))
