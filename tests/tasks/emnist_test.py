"""Image task: digits partition, DBA trigger, accuracies and the EMNIST loader."""

import sqlite3

import numpy as np
import pytest
import tensorflow as tf

from tasks import emnist


@pytest.fixture(scope='module')
def digits():
  return emnist.load_digits_task(num_clients=10, dirichlet_alpha=0.5, seed=0)


def _label_skew(task, num_classes=10):
  """Mean total-variation distance of client label mixes from the global mix."""
  y_all = np.concatenate([y for _, y in task.client_data])
  overall = np.bincount(y_all, minlength=num_classes) / len(y_all)
  tv = [0.5 * np.abs(np.bincount(y, minlength=num_classes) / len(y) - overall).sum()
        for _, y in task.client_data]
  return float(np.mean(tv))


def test_digits_split_and_partition(digits):
  assert digits.name == 'digits' and len(digits.client_data) == 10
  x_test, y_test = digits.test_data
  sizes = [len(x) for x, _ in digits.client_data]
  assert len(x_test) == 359 and sum(sizes) == 1797 - 359
  assert min(sizes) >= 5
  # Stratified test split: every class holds round(0.2 * n_c) examples.
  assert np.all(np.abs(np.bincount(y_test, minlength=10) - 36) <= 1)
  for x, y in digits.client_data:
    assert x.dtype == np.float32 and y.dtype == np.int32 and x.shape[1:] == (8, 8, 1)
    assert x.min() >= 0.0 and x.max() <= 1.0
  # Clients and test set are disjoint and together are the whole data set.
  rows = np.concatenate([x.reshape(len(x), -1) for x, _ in digits.client_data] +
                        [x_test.reshape(len(x_test), -1)])
  from sklearn.datasets import load_digits
  ref = load_digits().data / 16.0
  key = lambda a: sorted(map(bytes, np.round(a * 16).astype(np.uint8)))
  assert key(rows) == key(ref)


def test_dirichlet_skew_is_measurable():
  skewed = emnist.load_digits_task(num_clients=10, dirichlet_alpha=0.1, seed=1)
  iid = emnist.load_digits_task(num_clients=10, dirichlet_alpha=1000.0, seed=1)
  assert _label_skew(skewed) > 0.5
  assert _label_skew(iid) < 0.1
  assert min(len(x) for x, _ in skewed.client_data) >= 5


def test_dirichlet_partition_reproducible_and_impossible():
  labels = np.repeat(np.arange(3), 20)
  a = emnist.dirichlet_partition(labels, 4, 0.5, np.random.default_rng(3))
  b = emnist.dirichlet_partition(labels, 4, 0.5, np.random.default_rng(3))
  assert all(np.array_equal(p, q) for p, q in zip(a, b))
  assert sorted(np.concatenate(a).tolist()) == list(range(60))
  with pytest.raises(ValueError, match='cannot give'):
    emnist.dirichlet_partition(labels, 20, 0.5, np.random.default_rng(0), min_examples=5)


def test_poison_exact_rate_and_full_trigger(digits):
  x, y = digits.client_data[0]
  x = x[:40]
  y = y[:40]
  x_orig, y_orig = x.copy(), y.copy()
  xp, yp = digits.poison_fn(x, y, 0.25, np.random.default_rng(0))
  assert np.array_equal(x, x_orig) and np.array_equal(y, y_orig)  # inputs untouched
  rows, cols = emnist.trigger_pixels(emnist.DIGITS_TRIGGER_PARTS)
  stamped = np.all(xp[:, rows, cols, 0] == 1.0, axis=1)
  changed = np.any(xp != x, axis=(1, 2, 3)) | (yp != y)
  assert stamped.sum() == 10  # round(0.25 * 40) rows, none stamped by chance
  assert not np.any(changed & ~stamped)  # only stamped rows change
  assert np.all(yp[stamped] == 0) and np.array_equal(yp[~stamped], y[~stamped])
  # Outside the trigger, pixels are unchanged.
  mask = np.ones((8, 8), bool)
  mask[rows, cols] = False
  assert np.array_equal(xp[:, mask], x[:, mask])
  assert np.array_equal(digits.poison_fn(x, y, 0.0, np.random.default_rng(0))[0], x)


def test_dba_parts_touch_only_their_pixels_and_union_is_full_trigger(digits):
  assert digits.num_trigger_parts == 4
  x = np.zeros((6, 8, 8, 1), np.float32)
  y = np.full(6, 5, np.int32)
  union = np.zeros_like(x)
  for part in range(4):
    xp, yp = digits.poison_fn(x, y, 1.0, np.random.default_rng(part), trigger_part=part)
    lit = set(zip(*np.nonzero(xp[0, :, :, 0])))
    assert lit == set(emnist.DIGITS_TRIGGER_PARTS[part])
    assert np.all(yp == 0)
    union = np.maximum(union, xp)
  full, _ = digits.poison_fn(x, y, 1.0, np.random.default_rng(9))
  assert np.array_equal(union, full)
  assert int(full[0].sum()) == 8
  with pytest.raises(ValueError, match='trigger_part'):
    digits.poison_fn(x, y, 1.0, np.random.default_rng(0), trigger_part=4)


def test_backdoor_test_data_excludes_target_rows(digits):
  x_test, y_test = digits.test_data
  x_bd, y_bd = digits.backdoor_test_data
  keep = y_test != 0
  assert len(x_bd) == keep.sum() == len(y_test) - 36
  assert np.all(y_bd == 0) and y_bd.dtype == np.int32
  rows, cols = emnist.trigger_pixels(emnist.DIGITS_TRIGGER_PARTS)
  assert np.all(x_bd[:, rows, cols, 0] == 1.0)
  mask = np.ones((8, 8), bool)
  mask[rows, cols] = False
  assert np.array_equal(x_bd[:, mask], x_test[keep][:, mask])


def test_accuracies_of_a_hand_made_model(digits):
  # Predicts 0 when the top-left pixel is lit, else 3.
  def logits(x):
    lit = tf.cast(x[:, 0, 0, 0] >= 1.0, tf.int32)
    return tf.one_hot(lit * 0 + (1 - lit) * 3, 10)
  model = tf.keras.Sequential([tf.keras.layers.InputLayer(input_shape=(8, 8, 1)),
                               tf.keras.layers.Lambda(logits)])
  y_test = digits.test_data[1]
  assert digits.main_accuracy(model) == pytest.approx(np.mean(y_test == 3))
  assert digits.backdoor_accuracy(model) == 1.0


def test_digits_model_learns_main_task_and_backdoor(digits):
  tf.keras.utils.set_random_seed(0)
  rng = np.random.default_rng(0)
  parts = [digits.poison_fn(x, y, 0.1, rng) for x, y in digits.client_data]
  x = np.concatenate([p[0] for p in parts])
  y = np.concatenate([p[1] for p in parts])
  model = digits.model_fn()
  assert model.count_params() == 38282
  model.compile(tf.keras.optimizers.Adam(0.01),
                tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True))
  model.fit(x, y, epochs=15, batch_size=64, verbose=0)
  assert digits.main_accuracy(model) > 0.85
  assert digits.backdoor_accuracy(model) > 0.8


def test_emnist_model_is_tff_fedavg_cnn():
  from tensorflow_federated.python.simulation.baselines.emnist import emnist_models
  for only_digits, classes in ((True, 10), (False, 62)):
    ours = emnist.create_emnist_cnn(classes)
    tff_model = emnist_models.create_original_fedavg_cnn_model(only_digits=only_digits)
    assert ours.count_params() == tff_model.count_params()
    assert [w.shape for w in ours.weights] == [w.shape for w in tff_model.weights]
  assert emnist.create_emnist_cnn(10).count_params() == 1_663_370


def _write_emnist_sqlite(path, clients):
  """TFF's federated EMNIST file: tables `examples` and `client_metadata`."""
  with sqlite3.connect(path) as con:
    con.execute('CREATE TABLE examples (split_name TEXT NOT NULL, client_id TEXT NOT NULL, '
                'serialized_example_proto BLOB NOT NULL);')
    con.execute('CREATE TABLE client_metadata (client_id TEXT NOT NULL, '
                'split_name TEXT NOT NULL, num_examples INTEGER NOT NULL);')
    for (split, client_id), examples in clients.items():
      for pixels, label in examples:
        example = tf.train.Example(features=tf.train.Features(feature={
            'pixels': tf.train.Feature(float_list=tf.train.FloatList(value=pixels.ravel())),
            'label': tf.train.Feature(int64_list=tf.train.Int64List(value=[label])),
        }))
        con.execute('INSERT INTO examples VALUES (?, ?, ?);',
                    (split, client_id, example.SerializeToString()))
      con.execute('INSERT INTO client_metadata VALUES (?, ?, ?);',
                  (client_id, split, len(examples)))


@pytest.fixture
def no_download(monkeypatch):
  from tensorflow_federated.python.simulation.datasets import download

  def fail(origin, filename):
    raise AssertionError(f'network download attempted: {origin} -> {filename}')
  monkeypatch.setattr(download, '_fetch_lzma_file', fail)


def test_emnist_loader_reads_tff_sqlite_offline(tmp_path, no_download):
  rng = np.random.default_rng(0)
  make = lambda n, label0: [(rng.random((28, 28)).astype(np.float32), (label0 + i) % 10)
                            for i in range(n)]
  clients = {
      ('digits_only_train', 'f0002_07'): make(3, 2),
      ('digits_only_train', 'f0000_01'): make(4, 0),
      ('digits_only_train', 'f0001_03'): make(2, 5),
      ('digits_only_test', 'f0000_01'): make(3, 1),
      ('digits_only_test', 'f0001_03'): make(3, 7),
      ('all_train', 'f0000_01'): make(2, 0),
  }
  _write_emnist_sqlite(str(tmp_path / 'emnist_all.sqlite'), clients)
  task = emnist.load_emnist_task(str(tmp_path), num_clients=2, max_test_examples=4)
  assert task.info['client_ids'] == ['f0000_01', 'f0001_03']  # sorted, first two
  assert len(task.client_data) == 2
  for (x, y), key in zip(task.client_data, [('digits_only_train', 'f0000_01'),
                                            ('digits_only_train', 'f0001_03')]):
    expected = clients[key]
    assert x.shape == (len(expected), 28, 28, 1) and x.dtype == np.float32
    assert y.dtype == np.int32 and y.tolist() == [label for _, label in expected]
    np.testing.assert_allclose(x[..., 0], 1.0 - np.stack([p for p, _ in expected]), atol=1e-6)
  x_test, y_test = task.test_data
  assert x_test.shape == (4, 28, 28, 1)
  all_test = {l for k, v in clients.items() if k[0] == 'digits_only_test' for _, l in v}
  assert set(y_test.tolist()) <= all_test
  x_bd, y_bd = task.backdoor_test_data
  assert len(x_bd) == np.sum(y_test != 0) and np.all(y_bd == 0)
  rows, cols = emnist.trigger_pixels(emnist.EMNIST_TRIGGER_PARTS)
  assert np.all(x_bd[:, rows, cols, 0] == 1.0) and len(rows) == 16
  assert task.num_trigger_parts == 4
  assert task.model_fn().count_params() == 1_663_370
  x0, y0 = task.client_data[0]
  xp, yp = task.poison_fn(x0, y0, 0.5, np.random.default_rng(0))
  stamped = np.all(xp[:, rows, cols, 0] == 1.0, axis=1)
  assert stamped.sum() == 2 and np.all(yp[stamped] == 0)
  with pytest.raises(ValueError, match='num_clients'):
    emnist.load_emnist_task(str(tmp_path), num_clients=5)


def test_emnist_loader_without_cached_file_would_download(tmp_path, no_download):
  with pytest.raises(AssertionError, match='emnist_all.sqlite.lzma'):
    emnist.load_emnist_task(str(tmp_path / 'empty'))
