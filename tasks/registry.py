"""Tasks by name: one loader per task, each reading its own fields of the task config.

Adding a task touches its module, its entry here and its tests. A loader takes
the task config (`experiments.config.TaskConfig`: `num_clients` and the
task's own `<task>_...` fields) and the run's seed; the config is the one
source of every default. Task modules are imported only when their task is
loaded, so listing the names costs nothing.
"""

import os
from typing import Any, Callable

from tasks import task

Loader = Callable[[Any, int], task.Task]
_LOADERS: dict = {}


def register(name: str) -> Callable[[Loader], Loader]:
  """Registers `loader(task_config, seed) -> Task` under `name` (the `--task` value)."""
  def add(loader: Loader) -> Loader:
    if name in _LOADERS:
      raise ValueError(f'task {name!r} is registered twice.')
    _LOADERS[name] = loader
    return loader
  return add


def load_task(config: Any, seed: int) -> task.Task:
  """The configured task's data, model and backdoor.

  Raises ValueError naming the flag when a required path is missing or wrong;
  the loaders raise ValueError naming the file when its content is bad.
  """
  if config.task not in _LOADERS:
    raise ValueError(f'--task must be one of {", ".join(_LOADERS)}; got {config.task!r}.')
  return _LOADERS[config.task](config, seed)


def _existing(config, flag: str, what: str) -> str:
  """The path in `config.<flag>`, or ValueError naming `--flag` when it is unset or absent."""
  path = getattr(config, flag)
  if not path:
    raise ValueError(f'--task={config.task} needs --{flag} ({what}).')
  if not os.path.exists(path):
    raise ValueError(f'--{flag}={path}: no such file or folder.')
  return path


@register('digits')
def _digits(config, seed):
  from tasks import digits  # pylint: disable=g-import-not-at-top
  return digits.load_digits_task(num_clients=config.num_clients,
                                 dirichlet_alpha=config.dirichlet_alpha, seed=seed)


@register('emnist')
def _emnist(config, seed):
  from tasks import emnist  # pylint: disable=g-import-not-at-top
  if not config.emnist_cache_dir:
    raise ValueError('--task=emnist needs --emnist_cache_dir (TFF downloads the data there '
                     'once, or finds emnist_all.sqlite in it).')
  return emnist.load_emnist_task(config.emnist_cache_dir, num_clients=config.num_clients,
                                 seed=seed)


@register('fashion_mnist')
def _fashion_mnist(config, seed):
  from tasks import fashion_mnist  # pylint: disable=g-import-not-at-top
  return fashion_mnist.load_fashion_mnist_task(
      config.fashion_mnist_dir, num_clients=config.num_clients,
      dirichlet_alpha=config.dirichlet_alpha, seed=seed,
      train_examples=config.fashion_mnist_train_examples,
      test_examples=config.fashion_mnist_test_examples)


@register('shakespeare')
def _shakespeare(config, seed):
  from tasks import shakespeare  # pylint: disable=g-import-not-at-top
  if config.shakespeare_text:
    if not os.path.isfile(config.shakespeare_text):
      raise ValueError(f'--shakespeare_text={config.shakespeare_text}: no such file.')
    return shakespeare.load_shakespeare_text_task(config.shakespeare_text,
                                                  max_clients=config.num_clients, seed=seed)
  if not config.shakespeare_cache_dir:
    raise ValueError('--task=shakespeare needs --shakespeare_text=PATH (a play in '
                     "'SPEAKER:' + lines format) or --shakespeare_cache_dir.")
  return shakespeare.load_shakespeare_task(config.shakespeare_cache_dir,
                                           max_clients=config.num_clients, seed=seed)


@register('nbaiot')
def _nbaiot(config, seed):
  from tasks import nbaiot  # pylint: disable=g-import-not-at-top
  path = _existing(config, 'nbaiot_path', 'a per-device N-BaIoT folder or a folder of CSV files')
  return nbaiot.load_nbaiot_task(path, clients_per_device=config.nbaiot_clients_per_device,
                                 seed=seed)


TASKS = tuple(_LOADERS)
