"""Federated EMNIST through TFF (one client per writer, 28x28 images) with DBA's MNIST bar trigger.

The real-data counterpart of `tasks.digits`, as in the FLAME and DBA papers.
"""

from typing import Optional, Sequence

import numpy as np
import tensorflow as tf

from tasks import images
from tasks import task

# DBA's MNIST layout: four 1x4 bars in the top-left corner (rows 1 and 3,
# columns 1-4 and 6-9).
EMNIST_TRIGGER_PARTS = (
    tuple((1, c) for c in range(1, 5)),
    tuple((1, c) for c in range(6, 10)),
    tuple((3, c) for c in range(1, 5)),
    tuple((3, c) for c in range(6, 10)),
)


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
                     *,
                     num_clients: int,
                     seed: int,
                     only_digits: bool = True,
                     target_label: int = 0,
                     max_test_examples: int = 2000,
                     client_ids: Optional[Sequence[str]] = None,
                     invert_pixels: bool = True,
                     trigger_parts: images.TriggerParts = EMNIST_TRIGGER_PARTS,
                     trigger_value: float = 1.0) -> task.Task:
  """Federated EMNIST (one client per writer) from TFF's cached SQLite file.

  `tff.simulation.datasets.emnist.load_data` reads `<cache_dir>/
  emnist_all.sqlite` and downloads it (emnist_all.sqlite.lzma) only when that
  file is absent. Training clients are `client_ids`, or else the first
  `num_clients` writer ids in sorted order. The test set is the first
  `max_test_examples` examples of the test split over all writers, taken in an
  order of writers shuffled with `seed`. TFF stores background 1 and ink 0;
  `invert_pixels` turns that into the image tasks' background 0, ink 1.
  """
  import tensorflow_federated as tff  # pylint: disable=g-import-not-at-top
  num_classes = 10 if only_digits else 62
  if not 0 <= target_label < num_classes:
    raise ValueError(f'target_label must be in [0, {num_classes}), got {target_label!r}.')
  images._check_trigger(trigger_parts, 28, 28)  # pylint: disable=protected-access
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
  return task.Task(
      name='emnist' if only_digits else 'emnist62',
      client_data=client_data,
      test_data=(x_test, y_test),
      backdoor_test_data=images.backdoor_test_set(x_test, y_test, trigger_parts, trigger_value,
                                                  target_label),
      model_fn=lambda: images.create_emnist_cnn(num_classes),
      poison_fn=images.make_poison_fn(trigger_parts, trigger_value, target_label),
      num_trigger_parts=len(trigger_parts),
      trigger=images.input_trigger(trigger_parts, trigger_value, target_label, (28, 28, 1)),
      info=dict(num_classes=num_classes, target_label=target_label, client_ids=list(client_ids),
                trigger_parts=trigger_parts, trigger_value=trigger_value))
