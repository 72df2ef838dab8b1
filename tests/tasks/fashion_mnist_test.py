"""Fashion-MNIST loader: IDX files (gzipped or not) written here, the split, the error."""

import gzip
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from experiments import config as config_lib
from tasks import emnist
from tasks import fashion_mnist
from tasks import images
from tasks import registry

REPO = pathlib.Path(__file__).resolve().parents[2]


def write_idx(path, array, compress):
  """An IDX file as the format defines it: 0, 0, type code, rank, big-endian sizes, data."""
  array = np.asarray(array)
  code = {np.dtype('uint8'): 0x08, np.dtype('int16'): 0x0B, np.dtype('float32'): 0x0D}[array.dtype]
  header = bytes([0, 0, code, array.ndim]) + b''.join(
      int(d).to_bytes(4, 'big') for d in array.shape)
  data = header + array.astype(array.dtype.newbyteorder('>')).tobytes()
  if compress:
    path = str(path) + '.gz'
    data = gzip.compress(data)
  with open(path, 'wb') as f:
    f.write(data)
  return path


def write_dataset(folder, rng, n_train=200, n_test=30, compress=True):
  folder.mkdir(parents=True, exist_ok=True)
  arrays = dict(train_images=rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
                train_labels=np.arange(n_train, dtype=np.uint8) % 10,
                test_images=rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
                test_labels=(np.arange(n_test, dtype=np.uint8) * 3) % 10)
  for key, array in arrays.items():
    write_idx(folder / fashion_mnist.FILES[key], array, compress)
  return arrays


@pytest.mark.parametrize('compress', [True, False])
def test_read_idx_matches_numpy(tmp_path, compress):
  rng = np.random.default_rng(0)
  for array in (rng.integers(0, 256, (3, 28, 28), dtype=np.uint8),
                np.arange(7, dtype=np.uint8),
                rng.integers(-300, 300, (4, 5), dtype=np.int16),
                rng.normal(size=(2, 3)).astype(np.float32)):
    path = write_idx(tmp_path / f'a{array.ndim}{array.dtype}', array, compress)
    read = fashion_mnist.read_idx(path)
    assert read.shape == array.shape and read.dtype == array.dtype
    np.testing.assert_array_equal(read, array)


def test_bad_idx_names_the_file(tmp_path):
  bad = tmp_path / 'bad'
  bad.write_bytes(b'\x00\x00\x08\x01\x00\x00\x00\x05abc')  # 5 bytes promised, 3 given
  with pytest.raises(ValueError, match='bad.*5.*bytes'):
    fashion_mnist.read_idx(str(bad))
  (tmp_path / 'text').write_text('hello')
  with pytest.raises(ValueError, match='text: not an IDX file'):
    fashion_mnist.read_idx(str(tmp_path / 'text'))


def _config(data_dir, **fields):
  return config_lib.TaskConfig(task='fashion_mnist', num_clients=4, dirichlet_alpha=0.5,
                               fashion_mnist_dir=str(data_dir), **fields)


@pytest.mark.parametrize('compress', [True, False])
def test_task_from_idx_files(tmp_path, compress):
  arrays = write_dataset(tmp_path, np.random.default_rng(1), compress=compress)
  task = registry.load_task(_config(tmp_path), seed=3)
  assert len(task.client_data) == 4
  # The clients hold exactly the training images, each with its own label, pixels / 255.
  xs = np.concatenate([x for x, _ in task.client_data])
  ys = np.concatenate([y for _, y in task.client_data])
  assert xs.shape == (200, 28, 28, 1) and xs.dtype == np.float32 and ys.dtype == np.int32
  expected = arrays['train_images'].astype(np.float32) / 255.0
  order = np.lexsort(expected.reshape(200, -1).T)
  got = np.lexsort(xs.reshape(200, -1).T)
  np.testing.assert_allclose(xs[got, ..., 0], expected[order])
  np.testing.assert_array_equal(ys[got], arrays['train_labels'][order])
  # The split is the shared Dirichlet partition with the task's seed.
  shards = images.dirichlet_partition(arrays['train_labels'], 4, 0.5, np.random.default_rng(3))
  for (x, y), shard in zip(task.client_data, shards):
    np.testing.assert_array_equal(y, arrays['train_labels'][shard])
    np.testing.assert_allclose(x[..., 0], expected[shard])
  x_test, y_test = task.test_data
  np.testing.assert_array_equal(y_test, arrays['test_labels'])
  np.testing.assert_allclose(x_test[..., 0], arrays['test_images'] / 255.0, rtol=1e-6)
  x_bd, y_bd = task.backdoor_test_data
  rows, cols = images.trigger_pixels(emnist.EMNIST_TRIGGER_PARTS)
  assert len(x_bd) == np.sum(y_test != 0) and np.all(y_bd == 0)
  assert np.all(x_bd[:, rows, cols, 0] == 1.0) and task.num_trigger_parts == 4
  x0, y0 = task.client_data[0]
  xp, yp = task.poison_fn(x0, y0, 1.0, np.random.default_rng(0), trigger_part=1)
  part_rows, part_cols = images.trigger_pixels(emnist.EMNIST_TRIGGER_PARTS, 1)
  assert np.all(xp[:, part_rows, part_cols, 0] == 1.0) and np.all(yp == 0)
  subset = registry.load_task(_config(tmp_path, fashion_mnist_train_examples=100), seed=3)
  assert sum(len(x) for x, _ in subset.client_data) == 100
  # A test subset: the same test images for every seed, each with its own label.
  small = [registry.load_task(_config(tmp_path, fashion_mnist_test_examples=7), seed=seed)
           for seed in (3, 4)]
  x_small, y_small = small[0].test_data
  assert len(y_small) == 7
  np.testing.assert_array_equal(x_small, small[1].test_data[0])
  for x, y in zip(x_small[..., 0], y_small):
    matches = np.flatnonzero(np.all(np.isclose(arrays['test_images'] / 255.0, x), axis=(1, 2)))
    assert y in arrays['test_labels'][matches]


def test_missing_folder_or_file_is_one_line_naming_the_flag_and_package(tmp_path):
  with pytest.raises(ValueError, match='--fashion_mnist_dir.*no such folder.*'
                     'apt-get install dataset-fashion-mnist'):
    fashion_mnist.find_files(str(tmp_path / 'absent'))
  write_dataset(tmp_path, np.random.default_rng(2))
  os.remove(tmp_path / 't10k-labels-idx1-ubyte.gz')
  with pytest.raises(ValueError, match='t10k-labels-idx1-ubyte.*missing.*dataset-fashion-mnist'):
    fashion_mnist.find_files(str(tmp_path))
  out_dir = tmp_path / 'never'
  out = subprocess.run(
      [sys.executable, '-m', 'experiments.run', '--task=fashion_mnist',
       f'--fashion_mnist_dir={tmp_path / "absent"}', f'--output_dir={out_dir}'],
      cwd=REPO, capture_output=True, text=True, timeout=300,
      env=dict(os.environ, PYTHONPATH=str(REPO)))
  assert out.returncode == 2
  errors = [l for l in out.stderr.splitlines() if l.startswith('error:')]
  assert len(errors) == 1 and '--fashion_mnist_dir' in errors[0]
  assert 'dataset-fashion-mnist' in errors[0] and 'Traceback' not in out.stderr
  assert not out_dir.exists()


if __name__ == '__main__':
  # `bazel test` runs this file as a py_test: pytest, with tests/conftest.py.
  tests_dir = pathlib.Path(__file__).absolute().parents[1]
  sys.exit(pytest.main([__file__, '-p', 'no:cacheprovider', f'--confcutdir={tests_dir}',
                        *sys.argv[1:]]))
