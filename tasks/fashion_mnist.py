"""Fashion-MNIST from its IDX files (offline), Dirichlet non-IID clients, DBA's bar trigger.

Debian's `dataset-fashion-mnist` (`apt-get install dataset-fashion-mnist`)
installs the four files of the release under /usr/share/datasets/fashion-mnist
(`train-images-idx3-ubyte.gz`, `train-labels-idx1-ubyte.gz`,
`t10k-images-idx3-ubyte.gz`, `t10k-labels-idx1-ubyte.gz`); gzipped or plain
IDX files are both read. 28x28 grey images, 10 classes, the EMNIST CNN.
"""

import gzip
import os
from typing import Optional

import numpy as np

from tasks import emnist
from tasks import images
from tasks import task

DEBIAN_PACKAGE = 'dataset-fashion-mnist'
FILES = dict(train_images='train-images-idx3-ubyte', train_labels='train-labels-idx1-ubyte',
             test_images='t10k-images-idx3-ubyte', test_labels='t10k-labels-idx1-ubyte')
TEST_SUBSET_SEED = 20221111  # fixed: every run seed evaluates on the same test images
CLASS_NAMES = ('T-shirt/top', 'Trouser', 'Pullover', 'Dress', 'Coat', 'Sandal', 'Shirt',
               'Sneaker', 'Bag', 'Ankle boot')
# IDX type codes -> big-endian NumPy dtypes.
_IDX_DTYPES = {0x08: np.dtype('u1'), 0x09: np.dtype('i1'), 0x0B: np.dtype('>i2'),
               0x0C: np.dtype('>i4'), 0x0D: np.dtype('>f4'), 0x0E: np.dtype('>f8')}


def read_idx(path: str) -> np.ndarray:
  """The array in an IDX file (LeCun's MNIST format), gzipped or not.

  Raises ValueError naming the file when its header or size is wrong.
  """
  with open(path, 'rb') as f:
    data = f.read()
  if data[:2] == b'\x1f\x8b':
    try:
      data = gzip.decompress(data)
    except (OSError, EOFError) as e:
      raise ValueError(f'{path}: not a readable gzip file ({e}).') from e
  if len(data) < 4 or data[:2] != b'\x00\x00' or data[2] not in _IDX_DTYPES:
    raise ValueError(f'{path}: not an IDX file (bad magic number {data[:4].hex()}).')
  dtype, ndim = _IDX_DTYPES[data[2]], data[3]
  header = 4 + 4 * ndim
  if len(data) < header:
    raise ValueError(f'{path}: IDX header cut short.')
  shape = tuple(int(d) for d in np.frombuffer(data, '>u4', count=ndim, offset=4))
  expected = header + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
  if len(data) != expected:
    raise ValueError(f'{path}: IDX shape {shape} needs {expected} bytes, the file has '
                     f'{len(data)}.')
  return np.frombuffer(data, dtype, offset=header).reshape(shape).astype(dtype.newbyteorder('='))


def find_files(data_dir: str) -> dict:
  """The path of each of the four files (plain or `.gz`); ValueError naming the flag if absent."""
  hint = (f'install the data with `apt-get install {DEBIAN_PACKAGE}` (Debian package '
          f'{DEBIAN_PACKAGE}) or point --fashion_mnist_dir at a folder with '
          f'{FILES["train_images"]}[.gz] and the three other IDX files')
  if not os.path.isdir(data_dir):
    raise ValueError(f'--fashion_mnist_dir={data_dir}: no such folder; {hint}.')
  paths = {}
  for key, name in FILES.items():
    found = [os.path.join(data_dir, n) for n in (name, name + '.gz')
             if os.path.isfile(os.path.join(data_dir, n))]
    if not found:
      raise ValueError(f'--fashion_mnist_dir={data_dir}: {name}[.gz] is missing; {hint}.')
    paths[key] = found[0]
  return paths


def _images_and_labels(images_path: str, labels_path: str) -> tuple:
  x, y = read_idx(images_path), read_idx(labels_path)
  if x.ndim != 3 or x.shape[1:] != (28, 28) or x.dtype != np.uint8:
    raise ValueError(f'{images_path}: expected uint8 images [N, 28, 28], got {x.dtype} '
                     f'{x.shape}.')
  if y.ndim != 1 or len(y) != len(x) or (len(y) and (y.min() < 0 or y.max() > 9)):
    raise ValueError(f'{labels_path}: expected {len(x)} labels in [0, 9], got shape {y.shape}.')
  return (x.astype(np.float32) / 255.0)[..., np.newaxis], y.astype(np.int32)


def load_fashion_mnist_task(data_dir: str,
                            *,
                            num_clients: int,
                            dirichlet_alpha: float,
                            seed: int,
                            train_examples: Optional[int],
                            test_examples: Optional[int],
                            target_label: int = 0,
                            min_examples_per_client: int = 5,
                            trigger_parts: images.TriggerParts = emnist.EMNIST_TRIGGER_PARTS,
                            trigger_value: float = 1.0) -> task.Task:
  """Fashion-MNIST spread over `num_clients` clients with a Dirichlet(alpha) label mix each.

  `train_examples` (None: all) training images, a random subset drawn with
  `seed`, are partitioned (`images.dirichlet_partition`); the test set is the
  release's 10,000 test images, or `test_examples` of them (a random subset
  that does not depend on `seed`, so every seed is measured alike). Pixels are scaled to [0, 1] (background 0).
  The backdoor is DBA's four-bar trigger in the top-left corner (as EMNIST's)
  relabelling to `target_label` (0, T-shirt/top).
  """
  if not 0 <= target_label < 10:
    raise ValueError(f'target_label must be in [0, 10), got {target_label!r}.')
  images._check_trigger(trigger_parts, 28, 28)  # pylint: disable=protected-access
  paths = find_files(data_dir)
  x_train, y_train = _images_and_labels(paths['train_images'], paths['train_labels'])
  x_test, y_test = _images_and_labels(paths['test_images'], paths['test_labels'])
  rng = np.random.default_rng(seed)
  if train_examples is not None:
    if not 1 <= train_examples <= len(x_train):
      raise ValueError(f'--fashion_mnist_train_examples must be in [1, {len(x_train)}], got '
                       f'{train_examples}.')
    keep = np.sort(rng.choice(len(x_train), size=train_examples, replace=False))
    x_train, y_train = x_train[keep], y_train[keep]
  if test_examples is not None:
    if not 1 <= test_examples <= len(x_test):
      raise ValueError(f'--fashion_mnist_test_examples must be in [1, {len(x_test)}], got '
                       f'{test_examples}.')
    order = np.random.default_rng(TEST_SUBSET_SEED).permutation(len(x_test))
    keep = np.sort(order[:test_examples])
    x_test, y_test = x_test[keep], y_test[keep]
  shards = images.dirichlet_partition(y_train, num_clients, dirichlet_alpha, rng,
                                      min_examples=min_examples_per_client)
  return task.Task(
      name='fashion_mnist',
      client_data=[(x_train[s], y_train[s]) for s in shards],
      test_data=(x_test, y_test),
      backdoor_test_data=images.backdoor_test_set(x_test, y_test, trigger_parts, trigger_value,
                                                  target_label),
      model_fn=lambda: images.create_emnist_cnn(10),
      poison_fn=images.make_poison_fn(trigger_parts, trigger_value, target_label),
      num_trigger_parts=len(trigger_parts),
      trigger=images.input_trigger(trigger_parts, trigger_value, target_label, (28, 28, 1)),
      info=dict(num_classes=10, class_names=CLASS_NAMES, target_label=target_label,
                trigger_parts=trigger_parts, trigger_value=trigger_value,
                dirichlet_alpha=dirichlet_alpha, files=paths))
