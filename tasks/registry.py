"""Loads a task by name with the options the training binary and grids expose."""

import os
from typing import Optional

from tasks import task

TASKS = ('digits', 'emnist', 'fashion_mnist', 'shakespeare', 'nbaiot')


def load_task(name: str,
              num_clients: int = 20,
              seed: int = 0,
              dirichlet_alpha: float = 0.5,
              emnist_cache_dir: Optional[str] = None,
              fashion_mnist_dir: str = '/usr/share/datasets/fashion-mnist',
              fashion_mnist_train_examples: Optional[int] = None,
              fashion_mnist_test_examples: Optional[int] = None,
              shakespeare_text: Optional[str] = None,
              shakespeare_cache_dir: Optional[str] = None,
              nbaiot_path: Optional[str] = None,
              nbaiot_clients_per_device: int = 5) -> task.Task:
  """The named task's data, model and backdoor.

  Raises ValueError naming the flag when a required path is missing or wrong;
  the loaders raise ValueError naming the file when its content is bad.
  """
  if name == 'digits':
    from tasks import digits  # pylint: disable=g-import-not-at-top
    return digits.load_digits_task(num_clients=num_clients, dirichlet_alpha=dirichlet_alpha,
                                   seed=seed)
  if name == 'emnist':
    from tasks import emnist  # pylint: disable=g-import-not-at-top
    if not emnist_cache_dir:
      raise ValueError('--task=emnist needs --emnist_cache_dir (TFF downloads the data there '
                       'once, or finds emnist_all.sqlite in it).')
    return emnist.load_emnist_task(emnist_cache_dir, num_clients=num_clients, seed=seed)
  if name == 'fashion_mnist':
    from tasks import fashion_mnist  # pylint: disable=g-import-not-at-top
    return fashion_mnist.load_fashion_mnist_task(
        fashion_mnist_dir, num_clients=num_clients, dirichlet_alpha=dirichlet_alpha, seed=seed,
        train_examples=fashion_mnist_train_examples, test_examples=fashion_mnist_test_examples)
  if name == 'shakespeare':
    from tasks import shakespeare  # pylint: disable=g-import-not-at-top
    if shakespeare_text:
      if not os.path.isfile(shakespeare_text):
        raise ValueError(f'--shakespeare_text={shakespeare_text}: no such file.')
      return shakespeare.load_shakespeare_text_task(shakespeare_text, max_clients=num_clients,
                                                    seed=seed)
    if not shakespeare_cache_dir:
      raise ValueError('--task=shakespeare needs --shakespeare_text=PATH (a play in '
                       "'SPEAKER:' + lines format) or --shakespeare_cache_dir.")
    return shakespeare.load_shakespeare_task(shakespeare_cache_dir, max_clients=num_clients,
                                             seed=seed)
  if name == 'nbaiot':
    from tasks import nbaiot  # pylint: disable=g-import-not-at-top
    if not nbaiot_path:
      raise ValueError('--task=nbaiot needs --nbaiot_path (a per-device N-BaIoT folder or a '
                       'folder of CSV files).')
    if not os.path.exists(nbaiot_path):
      raise ValueError(f'--nbaiot_path={nbaiot_path}: no such file or folder.')
    return nbaiot.load_nbaiot_task(nbaiot_path, clients_per_device=nbaiot_clients_per_device,
                                   seed=seed)
  raise ValueError(f'--task must be one of {TASKS}, got {name!r}.')
