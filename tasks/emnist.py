"""Image classification task: handwritten digits with a DBA pixel trigger.

Two data sources with the same task layout:

- `load_digits_task`: offline, scikit-learn's 1,797 real 8x8 digit images
  (values 0..16 scaled to [0, 1]), split train/test per class, then the train
  split spread over clients with a Dirichlet(alpha) label mix per client.
- `load_emnist_task`: federated EMNIST through
  `tff.simulation.datasets.emnist.load_data` (one client per writer, as
  LEAF/TFF partition it), 28x28 images.

Images are [H, W, 1] float32 with background 0 and ink 1 (TFF's EMNIST stores
background 1, so it is inverted by default) and labels int32.

Backdoor (Xie et al., DBA, ICLR 2020): the trigger is a set of pixels set to
`trigger_value` (bright) and maps any image to `target_label`. It is given as
parts (lists of (row, col) pixels); a DBA attacker i stamps only part i, and the
backdoor is tested with the union of all parts. Defaults: on 8x8 digits, two
pixels in each of the four corners (columns 0 and 7 are blank in ~99% of the
images); on 28x28 EMNIST, DBA's MNIST layout of four 1x4 bars in the top-left
corner (rows 1 and 3, columns 1-4 and 6-9).

Models output logits. The 8x8 CNN (conv 16 3x3 -> conv 32 3x3 -> dense 64 ->
dense 10, 'valid' padding, 38,282 parameters) is sized for 8x8 inputs; the
28x28 CNN is TFF's `create_original_fedavg_cnn_model` (McMahan et al. 2017):
conv 32 5x5, max-pool, conv 64 5x5, max-pool, dense 512, dense 10; 1,663,370
parameters with 10 classes, without the final softmax.
"""

from typing import Optional, Sequence

import numpy as np
import tensorflow as tf

from tasks import task_data

Pixel = tuple
TriggerParts = Sequence[Sequence[Pixel]]

DIGITS_TRIGGER_PARTS = (
    ((0, 0), (1, 0)),
    ((0, 7), (1, 7)),
    ((6, 0), (7, 0)),
    ((6, 7), (7, 7)),
)
EMNIST_TRIGGER_PARTS = (
    tuple((1, c) for c in range(1, 5)),
    tuple((1, c) for c in range(6, 10)),
    tuple((3, c) for c in range(1, 5)),
    tuple((3, c) for c in range(6, 10)),
)


def create_digits_cnn(num_classes: int = 10) -> tf.keras.Model:
  """Small CNN for [8, 8, 1] images; outputs logits."""
  return tf.keras.Sequential([
      tf.keras.layers.InputLayer(input_shape=(8, 8, 1)),
      tf.keras.layers.Conv2D(16, 3, activation='relu'),
      tf.keras.layers.Conv2D(32, 3, activation='relu'),
      tf.keras.layers.Flatten(),
      tf.keras.layers.Dense(64, activation='relu'),
      tf.keras.layers.Dense(num_classes),
  ])


def create_emnist_cnn(num_classes: int = 10) -> tf.keras.Model:
  """TFF's original FedAvg CNN for [28, 28, 1] EMNIST, returning logits."""
  conv = lambda filters: tf.keras.layers.Conv2D(
      filters, 5, padding='same', activation='relu')
  pool = lambda: tf.keras.layers.MaxPooling2D(pool_size=2, padding='same')
  return tf.keras.Sequential([
      tf.keras.layers.InputLayer(input_shape=(28, 28, 1)),
      conv(32), pool(), conv(64), pool(),
      tf.keras.layers.Flatten(),
      tf.keras.layers.Dense(512, activation='relu'),
      tf.keras.layers.Dense(num_classes),
  ])


def trigger_pixels(trigger_parts: TriggerParts, trigger_part: Optional[int] = None) -> tuple:
  """(rows, cols) index arrays of one part, or of the whole trigger (None)."""
  parts = trigger_parts if trigger_part is None else [trigger_parts[trigger_part]]
  pixels = [tuple(p) for part in parts for p in part]
  rows = np.array([p[0] for p in pixels], dtype=np.int64)
  cols = np.array([p[1] for p in pixels], dtype=np.int64)
  return rows, cols


def apply_trigger(x: np.ndarray, trigger_parts: TriggerParts, trigger_value: float,
                  trigger_part: Optional[int] = None) -> np.ndarray:
  """A copy of images `x` [N, H, W, C] with the trigger (or one part) stamped."""
  x = np.array(x, copy=True)
  rows, cols = trigger_pixels(trigger_parts, trigger_part)
  x[:, rows, cols, :] = trigger_value
  return x


def make_poison_fn(trigger_parts: TriggerParts, trigger_value: float, target_label: int):
  """poison_fn for images: stamps round(rate * N) random rows, relabels them.

  Rows of any label may be drawn (as in DBA's poisoned batches); trigger_part
  stamps that DBA part only.
  """
  num_parts = len(trigger_parts)

  def poison_fn(x: np.ndarray, y: np.ndarray, rate: float, rng: np.random.Generator,
                trigger_part: Optional[int] = None):
    task_data.check_trigger_part(trigger_part, num_parts)
    x = np.array(x, copy=True)
    y = np.array(y, copy=True)
    rows = task_data.choose_rows(np.arange(len(x)), rate, len(x), rng)
    x[rows] = apply_trigger(x[rows], trigger_parts, trigger_value, trigger_part)
    y[rows] = target_label
    return x, y

  return poison_fn


def backdoor_test_set(x: np.ndarray, y: np.ndarray, trigger_parts: TriggerParts,
                      trigger_value: float, target_label: int) -> tuple:
  """Test images whose true label is not the target, full trigger, target label."""
  keep = np.asarray(y) != target_label
  x_bd = apply_trigger(x[keep], trigger_parts, trigger_value)
  return x_bd, np.full(int(keep.sum()), target_label, dtype=np.int32)


def _check_trigger(trigger_parts: TriggerParts, height: int, width: int) -> None:
  if not trigger_parts or any(len(part) == 0 for part in trigger_parts):
    raise ValueError('trigger_parts must be a non-empty list of non-empty pixel lists.')
  for part in trigger_parts:
    for row, col in part:
      if not (0 <= row < height and 0 <= col < width):
        raise ValueError(f'trigger pixel {(row, col)} is outside a {height}x{width} image.')


def dirichlet_partition(labels: np.ndarray, num_clients: int, alpha: float,
                        rng: np.random.Generator, min_examples: int = 5,
                        max_tries: int = 1000) -> list:
  """Index arrays, one per client, with a Dirichlet(alpha) label mix each.

  For every class, its examples are shuffled and cut in proportions drawn
  from Dirichlet(alpha * 1) over clients (Hsu et al. 2019); draws are repeated
  until every client holds at least `min_examples` examples. Smaller alpha
  gives more skewed clients.
  """
  labels = np.asarray(labels)
  if num_clients < 1:
    raise ValueError(f'num_clients must be >= 1, got {num_clients}.')
  if not alpha > 0:
    raise ValueError(f'dirichlet_alpha must be > 0, got {alpha!r}.')
  if num_clients * min_examples > len(labels):
    raise ValueError(f'{len(labels)} examples cannot give {num_clients} clients '
                     f'{min_examples} examples each.')
  for _ in range(max_tries):
    shards = [[] for _ in range(num_clients)]
    for c in np.unique(labels):
      idx = rng.permutation(np.flatnonzero(labels == c))
      proportions = rng.dirichlet(np.full(num_clients, float(alpha)))
      cuts = (np.cumsum(proportions)[:-1] * len(idx)).astype(int)
      for client, part in enumerate(np.split(idx, cuts)):
        shards[client].extend(part.tolist())
    if min(len(s) for s in shards) >= min_examples:
      return [np.sort(np.array(s, dtype=np.int64)) for s in shards]
  raise ValueError(f'No Dirichlet({alpha}) draw in {max_tries} tries gave every one of '
                   f'{num_clients} clients {min_examples} examples; raise alpha or lower '
                   'num_clients.')


def stratified_split(labels: np.ndarray, test_fraction: float, rng: np.random.Generator) -> tuple:
  """(train_idx, test_idx), holding out round(test_fraction * n_c) of each class c."""
  if not 0.0 < test_fraction < 1.0:
    raise ValueError(f'test_fraction must be in (0, 1), got {test_fraction!r}.')
  train, test = [], []
  for c in np.unique(labels):
    idx = rng.permutation(np.flatnonzero(labels == c))
    n_test = int(round(test_fraction * len(idx)))
    test.extend(idx[:n_test].tolist())
    train.extend(idx[n_test:].tolist())
  return np.sort(np.array(train, dtype=np.int64)), np.sort(np.array(test, dtype=np.int64))


def load_digits_task(num_clients: int = 10,
                     dirichlet_alpha: float = 0.5,
                     seed: int = 0,
                     target_label: int = 0,
                     test_fraction: float = 0.2,
                     min_examples_per_client: int = 5,
                     trigger_parts: TriggerParts = DIGITS_TRIGGER_PARTS,
                     trigger_value: float = 1.0) -> task_data.TaskData:
  """Offline image task on scikit-learn's 8x8 digits, non-IID over clients."""
  from sklearn import datasets  # pylint: disable=g-import-not-at-top
  digits = datasets.load_digits()
  x = (digits.images / 16.0).astype(np.float32)[..., np.newaxis]
  y = digits.target.astype(np.int32)
  if not 0 <= target_label < 10:
    raise ValueError(f'target_label must be in [0, 10), got {target_label!r}.')
  _check_trigger(trigger_parts, 8, 8)
  rng = np.random.default_rng(seed)
  train_idx, test_idx = stratified_split(y, test_fraction, rng)
  shards = dirichlet_partition(y[train_idx], num_clients, dirichlet_alpha, rng,
                               min_examples=min_examples_per_client)
  client_data = [(x[train_idx][s], y[train_idx][s]) for s in shards]
  x_test, y_test = x[test_idx], y[test_idx]
  return task_data.TaskData(
      name='digits',
      client_data=client_data,
      test_data=(x_test, y_test),
      backdoor_test_data=backdoor_test_set(x_test, y_test, trigger_parts, trigger_value,
                                           target_label),
      model_fn=create_digits_cnn,
      poison_fn=make_poison_fn(trigger_parts, trigger_value, target_label),
      num_trigger_parts=len(trigger_parts),
      info=dict(num_classes=10, target_label=target_label, trigger_parts=trigger_parts,
                trigger_value=trigger_value, dirichlet_alpha=dirichlet_alpha))


def _to_numpy(dataset: tf.data.Dataset, invert_pixels: bool) -> tuple:
  """(x [N, 28, 28, 1] float32, y [N] int32) from a parsed EMNIST dataset."""
  xs, ys = [np.zeros((0, 28, 28), np.float32)], [np.zeros((0,), np.int32)]
  for batch in dataset.batch(4096).as_numpy_iterator():
    xs.append(batch['pixels'].astype(np.float32))
    ys.append(batch['label'].astype(np.int32))
  x = np.concatenate(xs)[..., np.newaxis]
  if invert_pixels:
    x = 1.0 - x
  return x.astype(np.float32), np.concatenate(ys)


def load_emnist_task(cache_dir: Optional[str],
                     only_digits: bool = True,
                     num_clients: int = 10,
                     seed: int = 0,
                     target_label: int = 0,
                     max_test_examples: int = 2000,
                     client_ids: Optional[Sequence[str]] = None,
                     invert_pixels: bool = True,
                     trigger_parts: TriggerParts = EMNIST_TRIGGER_PARTS,
                     trigger_value: float = 1.0) -> task_data.TaskData:
  """Federated EMNIST (one client per writer) from TFF's cached SQLite file.

  `tff.simulation.datasets.emnist.load_data` reads `<cache_dir>/
  emnist_all.sqlite` and downloads it (emnist_all.sqlite.lzma) only when that
  file is absent. Training clients are `client_ids`, or else the first
  `num_clients` writer ids in sorted order. The test set is the first
  `max_test_examples` examples of the test split over all writers, taken in an
  order of writers shuffled with `seed`.
  """
  import tensorflow_federated as tff  # pylint: disable=g-import-not-at-top
  num_classes = 10 if only_digits else 62
  if not 0 <= target_label < num_classes:
    raise ValueError(f'target_label must be in [0, {num_classes}), got {target_label!r}.')
  _check_trigger(trigger_parts, 28, 28)
  train, test = tff.simulation.datasets.emnist.load_data(
      only_digits=only_digits, cache_dir=cache_dir)
  if client_ids is None:
    if num_clients < 1 or num_clients > len(train.client_ids):
      raise ValueError(f'num_clients must be in [1, {len(train.client_ids)}], got {num_clients}.')
    client_ids = train.client_ids[:num_clients]
  unknown = sorted(set(client_ids) - set(train.client_ids))
  if unknown:
    raise ValueError(f'Unknown EMNIST client ids: {unknown[:5]}.')
  client_data = [_to_numpy(train.create_tf_dataset_for_client(cid), invert_pixels)
                 for cid in client_ids]
  test_ds = test.create_tf_dataset_from_all_clients(seed=seed).take(max_test_examples)
  x_test, y_test = _to_numpy(test_ds, invert_pixels)
  return task_data.TaskData(
      name='emnist' if only_digits else 'emnist62',
      client_data=client_data,
      test_data=(x_test, y_test),
      backdoor_test_data=backdoor_test_set(x_test, y_test, trigger_parts, trigger_value,
                                           target_label),
      model_fn=lambda: create_emnist_cnn(num_classes),
      poison_fn=make_poison_fn(trigger_parts, trigger_value, target_label),
      num_trigger_parts=len(trigger_parts),
      info=dict(num_classes=num_classes, target_label=target_label, client_ids=list(client_ids),
                trigger_parts=trigger_parts, trigger_value=trigger_value))
