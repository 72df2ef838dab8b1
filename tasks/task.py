"""`Task`, what every task loader returns, and the helpers the tasks share.

Models return logits. Labels are int32 class ids; for sequence tasks (y of rank
2) accuracy is per position and ignores positions whose label is the padding
id 0, so the same `accuracy` serves main and backdoor accuracy of every task.
"""

import dataclasses
from typing import Callable, Optional

import numpy as np
import tensorflow as tf

PAD_ID = 0


@dataclasses.dataclass(frozen=True)
class InputTrigger:
  """A trigger that overwrites input entries, x' = where(mask, values, x), and its target.

  The task's own trigger is `values`; an attack that optimises its trigger
  (A3FL) changes only the entries under `mask`, within `value_range`.
  """
  mask: np.ndarray  # bool, the shape of one input
  values: np.ndarray  # float32, the same shape
  target_label: int
  value_range: tuple  # (low, high)

  def apply(self, x: np.ndarray, values: Optional[np.ndarray] = None) -> np.ndarray:
    """A copy of the inputs `x` [N, ...] with the trigger (`values`, default the task's) stamped."""
    values = self.values if values is None else np.asarray(values, np.float32)
    return np.where(self.mask, values, x).astype(np.asarray(x).dtype)


@dataclasses.dataclass
class Task:
  """A whole federated backdoor task: client data, test sets, model, poisoning and metrics.

  Attributes:
    name: the task's name.
    client_data: one (x, y) pair of NumPy arrays per client.
    test_data: (x, y), the clean test set.
    backdoor_test_data: (x_triggered, y_target): triggered inputs whose true
      label is not the attacker's target, labelled with the target.
    model_fn: returns a fresh, uncompiled Keras model that outputs logits.
    poison_fn: poison_fn(x, y, rate, rng, trigger_part=None) -> (x, y), copies
      with the trigger applied to a `rate` fraction of rows (see each task for
      the rows it counts) relabelled to the target.
    num_trigger_parts: how many DBA parts the trigger splits into (1: none).
    backdoor_metric: metric(logits, y_target) -> BA; default
      `accuracy_from_logits` (per label).
    trigger: the trigger as input entries, for tasks whose trigger is one
      (images, N-BaIoT; None for text); `poison_fn` then also takes
      `trigger_values` to stamp other values under the same mask.
    info: task-specific metadata (class names, client ids, vocabulary, ...).
  """
  name: str
  client_data: list
  test_data: tuple
  backdoor_test_data: tuple
  model_fn: Callable[[], tf.keras.Model]
  poison_fn: Callable
  num_trigger_parts: int = 1
  backdoor_metric: Optional[Callable[[np.ndarray, np.ndarray], float]] = None
  trigger: Optional[InputTrigger] = None
  info: dict = dataclasses.field(default_factory=dict)

  def main_accuracy(self, model: tf.keras.Model) -> float:
    """Main-task accuracy (MA) on `test_data`."""
    return accuracy(model, *self.test_data)

  def backdoor_accuracy(self, model: tf.keras.Model,
                        trigger_values: Optional[np.ndarray] = None) -> float:
    """Backdoor accuracy (BA): how often triggered inputs get the target.

    With `trigger_values` (an attack's own trigger under the task's mask), on the
    same test inputs stamped with those values.
    """
    data = (self.backdoor_test_data if trigger_values is None else
            self.backdoor_test_data_for(trigger_values))
    return accuracy(model, *data, metric=self.backdoor_metric)

  def backdoor_test_data_for(self, trigger_values: np.ndarray) -> tuple:
    """The test inputs whose label is not the target, stamped with `trigger_values`."""
    if self.trigger is None:
      raise ValueError(f'task {self.name} has no input trigger whose values could change.')
    x, y = self.test_data
    keep = np.asarray(y) != self.trigger.target_label
    return (self.trigger.apply(x[keep], trigger_values),
            np.full(int(keep.sum()), self.trigger.target_label, dtype=np.int32))


def predict_logits(model: tf.keras.Model, x: np.ndarray, batch_size: int = 1024) -> np.ndarray:
  """The model's outputs on `x`, in batches and in inference mode."""
  outputs = [np.asarray(model(x[i:i + batch_size], training=False))
             for i in range(0, len(x), batch_size)]
  return np.concatenate(outputs, axis=0)


def accuracy_from_logits(logits: np.ndarray, y: np.ndarray) -> float:
  """Share of argmax predictions equal to `y`; rank-2 `y` skips padding (0).

  Returns NaN when nothing is counted (no rows, or only padding).
  """
  y = np.asarray(y)
  correct = np.argmax(logits, axis=-1) == y
  if y.ndim >= 2:
    mask = y != PAD_ID
    counted = int(mask.sum())
    return float(correct[mask].sum()) / counted if counted else float('nan')
  return float(correct.mean()) if correct.size else float('nan')


def whole_target_accuracy_from_logits(logits: np.ndarray, y: np.ndarray) -> float:
  """Share of rows whose every non-padding label is the argmax prediction.

  For a text backdoor whose target is a word: a row counts only when the whole
  word follows (under teacher forcing, the same as greedy decoding producing
  it). Rows with only padding are not counted; NaN when no row is.
  """
  y = np.asarray(y)
  mask = y != PAD_ID
  wrong = (np.argmax(logits, axis=-1) != y) & mask
  counted = mask.any(axis=1)
  if not counted.any():
    return float('nan')
  return float(np.mean(~wrong[counted].any(axis=1)))


def accuracy(model: tf.keras.Model, x: np.ndarray, y: np.ndarray, batch_size: int = 1024,
             metric: Optional[Callable[[np.ndarray, np.ndarray], float]] = None) -> float:
  """`metric(logits, y)` of a logits model on (x, y) (default `accuracy_from_logits`);
  NaN when x is empty."""
  if len(x) == 0:
    return float('nan')
  return (metric or accuracy_from_logits)(predict_logits(model, x, batch_size), y)


def choose_rows(candidates: np.ndarray, rate: float, total: int,
                rng: np.random.Generator) -> np.ndarray:
  """round(rate * total) distinct row indices drawn from `candidates`.

  Raises ValueError if `rate` is outside [0, 1] or there are too few candidates.
  """
  if not 0.0 <= rate <= 1.0:
    raise ValueError(f'rate must be in [0, 1], got {rate!r}.')
  count = int(round(rate * total))
  candidates = np.asarray(candidates)
  if count > len(candidates):
    raise ValueError(f'rate {rate} asks for {count} rows but only {len(candidates)} can be poisoned.')
  return np.sort(rng.choice(candidates, size=count, replace=False)).astype(np.int64)


def check_trigger_part(trigger_part: Optional[int], num_parts: int) -> None:
  """Raises ValueError unless `trigger_part` is None or in [0, num_parts)."""
  if trigger_part is not None and not (isinstance(trigger_part, (int, np.integer)) and
                                       0 <= trigger_part < num_parts):
    raise ValueError(f'trigger_part must be None or an int in [0, {num_parts}), got {trigger_part!r}.')

