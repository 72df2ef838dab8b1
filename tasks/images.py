"""Pieces the image tasks share: DBA pixel triggers, image poisoning, non-IID splits, 28x28 CNN.

Each image data set (8x8 digits, 28x28 EMNIST, ...) is then only a loader and its trigger layout.
"""

from typing import Optional, Sequence

import numpy as np
import tensorflow as tf

from tasks import task

# Images are [N, H, W, 1] float32, background 0 and ink 1; labels int32.
# Backdoor (Xie et al., DBA, ICLR 2020): the trigger is a set of pixels set to
# `trigger_value` that maps any image to `target_label`. It is given as parts
# (lists of (row, col) pixels); a DBA attacker i stamps only part i, and the
# backdoor is tested with the union of all parts.
Pixel = tuple
TriggerParts = Sequence[Sequence[Pixel]]


def create_emnist_cnn(num_classes: int = 10) -> tf.keras.Model:
  """TFF's original FedAvg CNN for [28, 28, 1] EMNIST, returning logits.

  TFF's `create_original_fedavg_cnn_model` (McMahan et al. 2017) without the
  final softmax: conv 32 5x5, max-pool, conv 64 5x5, max-pool, dense 512,
  dense `num_classes`; 1,663,370 parameters with 10 classes.
  """
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
                trigger_part: Optional[int] = None, trigger_values: Optional[np.ndarray] = None):
    task.check_trigger_part(trigger_part, num_parts)
    x = np.array(x, copy=True)
    y = np.array(y, copy=True)
    rows = task.choose_rows(np.arange(len(x)), rate, len(x), rng)
    if trigger_values is None:
      x[rows] = apply_trigger(x[rows], trigger_parts, trigger_value, trigger_part)
    else:
      if trigger_part is not None:
        raise ValueError('trigger_values replace the whole trigger; pass no trigger_part.')
      x[rows] = input_trigger(trigger_parts, trigger_value, target_label,
                              x.shape[1:]).apply(x[rows], trigger_values)
    y[rows] = target_label
    return x, y

  return poison_fn


def input_trigger(trigger_parts: TriggerParts, trigger_value: float, target_label: int,
                  image_shape: tuple) -> task.InputTrigger:
  """The whole pixel trigger as a `task.InputTrigger` over [H, W, C] images in [0, 1]."""
  mask = np.zeros(image_shape, bool)
  rows, cols = trigger_pixels(trigger_parts)
  mask[rows, cols, :] = True
  values = np.where(mask, np.float32(trigger_value), np.float32(0.0)).astype(np.float32)
  return task.InputTrigger(mask=mask, values=values, target_label=int(target_label),
                           value_range=(0.0, 1.0))


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
