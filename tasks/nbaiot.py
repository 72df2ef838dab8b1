"""N-BaIoT intrusion detection with a feature trigger that hides attacks.

Data (Meidan et al. 2018): CSV files with a header row and 115 numeric
features per row. Two layouts are read:

- the release's: `root/<device>/benign_traffic.csv`,
  `root/<device>/gafgyt_attacks/*.csv`, `root/<device>/mirai_attacks/*.csv`;
  each device is split into `clients_per_device` clients. Attack classes are
  named '<family>_<file stem>' (e.g. 'mirai_syn').
- flat: a folder of CSV files, those whose name contains 'benign' benign and the
  others attack (class = file stem). The rows do not say which device sent
  them, so the folder is one device, split into `clients_per_device` clients.

Every file is split on its own: a seeded random round(test_fraction * rows)
go to the test set; the rest of each file is shuffled and cut into
`clients_per_device` near-equal pieces, piece i going to the device's client i
(so every client gets every file of its device). Features are standardised
with the mean and standard deviation of all training rows (a standard deviation
of 0 is taken as 1); the test rows use the same statistics.

Labels: label_mode='binary' gives 0 benign / 1 attack; 'multiclass' gives 0
benign and 1..K for the attack classes in sorted name order.

Backdoor (as in FLAME's IoT experiment, after DIoT): attack rows carrying the
trigger (columns `trigger_features` set to `trigger_value`, in STANDARDISED
units) are labelled benign (0). poison_fn triggers round(rate * A) of the A
attack rows it is given (benign rows keep their label anyway);
backdoor_test_data is every attack test row with the trigger, labelled 0, so
BA = the share of them classified benign.

Model: an MLP 115 -> 64 -> 32 -> classes (ReLU), outputting logits.
"""

import os
import warnings
from typing import Optional, Sequence

import numpy as np
import tensorflow as tf

from tasks import task

NUM_FEATURES = 115
BENIGN_LABEL = 0
ATTACK_FAMILIES = ('gafgyt_attacks', 'mirai_attacks')
DEFAULT_TRIGGER_FEATURES = (5, 30, 55, 80, 105)
DEFAULT_TRIGGER_VALUE = 4.0


def create_mlp(num_classes: int = 2, num_features: int = NUM_FEATURES) -> tf.keras.Model:
  """MLP num_features -> 64 -> 32 -> num_classes, logits."""
  return tf.keras.Sequential([
      tf.keras.layers.InputLayer(input_shape=(num_features,)),
      tf.keras.layers.Dense(64, activation='relu'),
      tf.keras.layers.Dense(32, activation='relu'),
      tf.keras.layers.Dense(num_classes),
  ])


def read_csv(path: str, max_rows: Optional[int] = None) -> np.ndarray:
  """Rows of an N-BaIoT CSV file as float32 [N, 115].

  Raises ValueError naming the file if it is empty, has no data rows, a row or
  header with other than 115 columns, or a non-numeric / non-finite value.
  """
  if not os.path.isfile(path):
    raise ValueError(f'N-BaIoT file {path} does not exist.')
  with open(path, encoding='utf-8', errors='replace') as f:
    header = f.readline()
  if not header.strip():
    raise ValueError(f'N-BaIoT file {path} is empty.')
  if len(header.rstrip('\r\n').split(',')) != NUM_FEATURES:
    raise ValueError(f'N-BaIoT file {path}: header has {len(header.split(","))} columns, '
                     f'expected {NUM_FEATURES}.')
  try:
    with warnings.catch_warnings():
      warnings.simplefilter('ignore')  # loadtxt warns on a header-only file.
      x = np.loadtxt(path, delimiter=',', skiprows=1, dtype=np.float64, max_rows=max_rows,
                     ndmin=2)
  except ValueError as e:
    raise ValueError(f'N-BaIoT file {path}: {e}') from None
  if x.shape[0] == 0:
    raise ValueError(f'N-BaIoT file {path} has a header but no data rows.')
  if x.shape[1] != NUM_FEATURES:
    raise ValueError(f'N-BaIoT file {path}: rows have {x.shape[1]} columns, '
                     f'expected {NUM_FEATURES}.')
  if not np.all(np.isfinite(x)):
    raise ValueError(f'N-BaIoT file {path} holds non-finite values (nan or inf).')
  return x.astype(np.float32)


def find_files(path: str) -> dict:
  """{device: [(csv path, class name or None for benign), ...]} for either layout."""
  if not os.path.exists(path):
    raise ValueError(f'N-BaIoT path {path} does not exist.')
  if not os.path.isdir(path):
    raise ValueError(f'N-BaIoT path {path} is not a folder of CSV files.')
  devices = {}
  for entry in sorted(os.listdir(path)):
    folder = os.path.join(path, entry)
    if not os.path.isdir(folder):
      continue
    files = []
    if os.path.isfile(os.path.join(folder, 'benign_traffic.csv')):
      files.append((os.path.join(folder, 'benign_traffic.csv'), None))
    for family in ATTACK_FAMILIES:
      family_dir = os.path.join(folder, family)
      if os.path.isdir(family_dir):
        files += [(os.path.join(family_dir, name),
                   f'{family.split("_")[0]}_{os.path.splitext(name)[0]}')
                  for name in sorted(os.listdir(family_dir)) if name.endswith('.csv')]
    if files:
      devices[entry] = files
  if devices:
    return devices
  files = [(os.path.join(path, name),
            None if 'benign' in name.lower() else os.path.splitext(name)[0])
           for name in sorted(os.listdir(path)) if name.lower().endswith('.csv')]
  if not files:
    raise ValueError(f'N-BaIoT path {path} holds neither device folders (<device>/'
                     'benign_traffic.csv, gafgyt_attacks/, mirai_attacks/) nor CSV files.')
  return {os.path.basename(os.path.normpath(path)): files}


def standardize(x: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
  return ((x - mean) / std).astype(np.float32)


def fit_standardization(x_train: np.ndarray) -> tuple:
  """(mean, std) per feature over training rows; std 0 becomes 1."""
  x64 = np.asarray(x_train, dtype=np.float64)
  mean = x64.mean(axis=0)
  std = x64.std(axis=0)
  std = np.where(std > 0, std, 1.0)
  return mean.astype(np.float32), std.astype(np.float32)


def apply_trigger(x: np.ndarray, trigger_features: Sequence[int], trigger_value) -> np.ndarray:
  """A copy of `x` with the trigger columns set to `trigger_value`."""
  x = np.array(x, copy=True)
  x[:, list(trigger_features)] = trigger_value
  return x


def make_poison_fn(trigger_features: Sequence[int], trigger_value):
  """poison_fn: triggers round(rate * A) of the A attack rows, labels them benign."""

  def poison_fn(x: np.ndarray, y: np.ndarray, rate: float, rng: np.random.Generator,
                trigger_part: Optional[int] = None, trigger_values: Optional[np.ndarray] = None):
    task.check_trigger_part(trigger_part, 1)
    x = np.array(x, copy=True)
    y = np.array(y, copy=True)
    attack_rows = np.flatnonzero(y != BENIGN_LABEL)
    rows = task.choose_rows(attack_rows, rate, len(attack_rows), rng)
    if trigger_values is None:
      x[rows] = apply_trigger(x[rows], trigger_features, trigger_value)
    else:
      x[rows] = input_trigger(trigger_features, trigger_value, x.shape[1]).apply(
          x[rows], trigger_values)
    y[rows] = BENIGN_LABEL
    return x, y

  return poison_fn


def input_trigger(trigger_features: Sequence[int], trigger_value: float,
                  num_features: int = NUM_FEATURES) -> task.InputTrigger:
  """The feature trigger as a `task.InputTrigger` (target: benign); an optimised trigger
  stays within +-|trigger_value| standard deviations."""
  mask = np.zeros(num_features, bool)
  mask[list(trigger_features)] = True
  values = np.where(mask, np.float32(trigger_value), np.float32(0.0)).astype(np.float32)
  bound = abs(float(trigger_value))
  return task.InputTrigger(mask=mask, values=values, target_label=BENIGN_LABEL,
                           value_range=(-bound, bound))


def backdoor_test_set(x: np.ndarray, y: np.ndarray, trigger_features: Sequence[int],
                      trigger_value) -> tuple:
  """Attack test rows with the trigger, labelled benign."""
  attack = np.asarray(y) != BENIGN_LABEL
  x_bd = apply_trigger(x[attack], trigger_features, trigger_value)
  return x_bd, np.full(int(attack.sum()), BENIGN_LABEL, dtype=np.int32)


def load_nbaiot_task(path: str,
                     *,
                     clients_per_device: int,
                     seed: int,
                     test_fraction: float = 0.2,
                     label_mode: str = 'binary',
                     trigger_features: Sequence[int] = DEFAULT_TRIGGER_FEATURES,
                     trigger_value: float = DEFAULT_TRIGGER_VALUE,
                     max_rows_per_file: Optional[int] = None) -> task.Task:
  """N-BaIoT clients (devices x clients_per_device), standardised, with backdoor."""
  if label_mode not in ('binary', 'multiclass'):
    raise ValueError(f"label_mode must be 'binary' or 'multiclass', got {label_mode!r}.")
  if not isinstance(clients_per_device, int) or clients_per_device < 1:
    raise ValueError(f'clients_per_device must be an int >= 1, got {clients_per_device!r}.')
  if not 0.0 <= test_fraction < 1.0:
    raise ValueError(f'test_fraction must be in [0, 1), got {test_fraction!r}.')
  trigger_features = tuple(int(f) for f in trigger_features)
  if not trigger_features or any(not 0 <= f < NUM_FEATURES for f in trigger_features):
    raise ValueError(f'trigger_features must be non-empty column indices in '
                     f'[0, {NUM_FEATURES}), got {trigger_features!r}.')
  devices = find_files(path)
  files = [f for fs in devices.values() for f in fs]
  if all(c is not None for _, c in files):
    raise ValueError(f'N-BaIoT path {path} has no benign file (benign_traffic.csv or a '
                     'name containing "benign").')
  if all(c is None for _, c in files):
    raise ValueError(f'N-BaIoT path {path} has no attack file.')
  attack_classes = sorted({c for _, c in files if c is not None})
  if label_mode == 'binary':
    label_of = lambda c: 0 if c is None else 1
    class_names = ['benign', 'attack']
  else:
    label_of = lambda c: 0 if c is None else 1 + attack_classes.index(c)
    class_names = ['benign'] + attack_classes

  rng = np.random.default_rng(seed)
  client_x, client_y, client_ids = [], [], []
  test_x, test_y = [], []
  for device, device_files in devices.items():
    pieces_x = [[] for _ in range(clients_per_device)]
    pieces_y = [[] for _ in range(clients_per_device)]
    for file_path, class_name in device_files:
      x = read_csv(file_path, max_rows_per_file)
      y = np.full(len(x), label_of(class_name), dtype=np.int32)
      order = rng.permutation(len(x))
      n_test = int(round(test_fraction * len(x)))
      test_x.append(x[order[:n_test]])
      test_y.append(y[order[:n_test]])
      for i, part in enumerate(np.array_split(order[n_test:], clients_per_device)):
        pieces_x[i].append(x[np.sort(part)])
        pieces_y[i].append(y[np.sort(part)])
    for i in range(clients_per_device):
      client_x.append(np.concatenate(pieces_x[i]))
      client_y.append(np.concatenate(pieces_y[i]))
      client_ids.append(f'{device}/{i}')

  mean, std = fit_standardization(np.concatenate(client_x))
  client_data = [(standardize(x, mean, std), y) for x, y in zip(client_x, client_y)]
  x_test = standardize(np.concatenate(test_x), mean, std)
  y_test = np.concatenate(test_y)
  num_classes = len(class_names)
  return task.Task(
      name='nbaiot',
      client_data=client_data,
      test_data=(x_test, y_test),
      backdoor_test_data=backdoor_test_set(x_test, y_test, trigger_features, trigger_value),
      model_fn=lambda: create_mlp(num_classes),
      poison_fn=make_poison_fn(trigger_features, trigger_value),
      num_trigger_parts=1,
      trigger=input_trigger(trigger_features, trigger_value, x_test.shape[1]),
      info=dict(num_classes=num_classes, class_names=class_names, client_ids=client_ids,
                mean=mean, std=std, trigger_features=trigger_features,
                trigger_value=trigger_value, path=str(path)))
