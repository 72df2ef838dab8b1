"""EMNIST loader: reads TFF's SQLite file offline, trigger, poisoning, model size."""

import pathlib
import sqlite3
import sys

import numpy as np
import pytest
import tensorflow as tf

from tasks import emnist
from tasks import images


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
  task = emnist.load_emnist_task(str(tmp_path), num_clients=2, seed=0, max_test_examples=4)
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
  rows, cols = images.trigger_pixels(emnist.EMNIST_TRIGGER_PARTS)
  assert np.all(x_bd[:, rows, cols, 0] == 1.0) and len(rows) == 16
  assert task.num_trigger_parts == 4
  assert task.model_fn().count_params() == 1_663_370
  x0, y0 = task.client_data[0]
  xp, yp = task.poison_fn(x0, y0, 0.5, np.random.default_rng(0))
  stamped = np.all(xp[:, rows, cols, 0] == 1.0, axis=1)
  assert stamped.sum() == 2 and np.all(yp[stamped] == 0)
  with pytest.raises(ValueError, match='num_clients'):
    emnist.load_emnist_task(str(tmp_path), num_clients=5, seed=0)


def test_emnist_loader_without_cached_file_would_download(tmp_path, no_download):
  with pytest.raises(AssertionError, match='emnist_all.sqlite.lzma'):
    emnist.load_emnist_task(str(tmp_path / 'empty'), num_clients=10, seed=0)


if __name__ == '__main__':
  # `bazel test` runs this file as a py_test: pytest, with tests/conftest.py.
  tests_dir = pathlib.Path(__file__).absolute().parents[1]
  sys.exit(pytest.main([__file__, '-p', 'no:cacheprovider', f'--confcutdir={tests_dir}',
                        *sys.argv[1:]]))
