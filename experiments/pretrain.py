"""`--pretrain_rounds=R`: clean FedAvg first, cached as a checkpoint that runs and grid cells share.

Attacks in the FLAME paper and its peer benchmarks start from a trained model.
`load_or_train` runs R rounds of FedAvg with no attack and a plain mean
(`loop.build_process` and `loop.round_datasets` with `attack='none'`,
`defense='none'`), evaluates MA/BA of the result, and stores its weights
under `--pretrain_cache_dir` in a file named by a hash of everything that
determines them: the task's own config fields, the seed, the client sampling
and training hyperparameters, and R (`cache_key`). A later run with the same
key loads the file instead of training. The experiment then starts from those
weights (`loop.run_experiment(..., pretrained=...)`).

The key holds configuration, not code: after changing a model, a task's data
or the training code, delete the cache folder.
"""

# Postponed annotations: evaluating `tff.learning...` at import time would set up TFF's
# default executor, whose __del__ prints a traceback when the binary exits early on a bad flag.
from __future__ import annotations

import dataclasses
import fcntl
import hashlib
import json
import os
from typing import Callable, Optional

import numpy as np
import tensorflow_federated as tff

from experiments import loop
from experiments.config import ExperimentConfig
from experiments.config import TaskConfig

FORMAT_VERSION = 1
# The ExperimentConfig fields that decide the pretrained model (attack and
# defense fields do not: pretraining has neither).
EXPERIMENT_FIELDS = ('seed', 'clients_per_round', 'client_epochs', 'batch_size',
                     'client_learning_rate', 'server_learning_rate', 'pretrain_rounds')
# Tasks whose clients are a Dirichlet split (they read --dirichlet_alpha).
DIRICHLET_TASKS = ('digits', 'fashion_mnist')


def cache_key(task_config: TaskConfig, config: ExperimentConfig) -> dict:
  """The values that determine the pretrained model.

  From the task config: `task`, `num_clients`, the task's own `<task>_...`
  fields and `dirichlet_alpha` for Dirichlet-split tasks; other tasks' fields
  are left out, so they do not split the cache.
  """
  task_fields = {
      k: v for k, v in dataclasses.asdict(task_config).items()
      if k in ('task', 'num_clients') or k.startswith(task_config.task + '_') or
      (k == 'dirichlet_alpha' and task_config.task in DIRICHLET_TASKS)}
  return dict(format=FORMAT_VERSION, task=task_fields,
              experiment={k: getattr(config, k) for k in EXPERIMENT_FIELDS})


def cache_path(cache_dir: str, task_config: TaskConfig, config: ExperimentConfig) -> str:
  """`<cache_dir>/<task>-r<R>-<hash of the key>.npz`."""
  key = json.dumps(cache_key(task_config, config), sort_keys=True)
  digest = hashlib.sha256(key.encode()).hexdigest()[:16]
  return os.path.join(cache_dir, f'{task_config.task}-r{config.pretrain_rounds}-{digest}.npz')


@dataclasses.dataclass
class Pretrained:
  """A pretrained global model and how it did."""
  weights: tff.learning.models.ModelWeights
  main_accuracy: float
  backdoor_accuracy: float
  rounds: int
  path: str
  loaded: bool

  def summary(self) -> dict:
    return dict(rounds=self.rounds, main_accuracy=self.main_accuracy,
                backdoor_accuracy=self.backdoor_accuracy, checkpoint=self.path,
                loaded=self.loaded)


def train(task, config: ExperimentConfig, log: Callable[[str], None]) -> tuple:
  """(ModelWeights, MA, BA) after `config.pretrain_rounds` rounds of clean FedAvg."""
  clean = dataclasses.replace(config, attack='none', defense='none',
                              rounds=config.pretrain_rounds, pretrain_rounds=0)
  num_clients = len(task.client_data)
  clean.validate(num_clients)
  process = loop.build_process(task, clean)
  state = process.initialize()
  rng = np.random.default_rng([config.seed, 3])  # not the experiment's sampling stream
  for round_num in range(1, clean.rounds + 1):
    client_ids = np.sort(rng.choice(num_clients, clean.clients_per_round, replace=False))
    state = process.next(state, loop.round_datasets(task, client_ids, [], round_num,
                                                    clean)).state
    log(f'pretraining round {round_num}/{clean.rounds}')
  weights = process.get_model_weights(state)
  model = task.model_fn()
  weights.assign_weights_to(model)
  return weights, task.main_accuracy(model), task.backdoor_accuracy(model)


def _save(path: str, weights, record: dict) -> None:
  """Weights (.npz), then the record (.json) that marks the checkpoint complete; atomic each."""
  os.makedirs(os.path.dirname(path) or '.', exist_ok=True)
  arrays = {f'trainable_{i}': np.asarray(w) for i, w in enumerate(weights.trainable)}
  arrays.update({f'non_trainable_{i}': np.asarray(w)
                 for i, w in enumerate(weights.non_trainable)})
  tmp = f'{path}.{os.getpid()}.tmp'
  with open(tmp, 'wb') as f:
    np.savez(f, **arrays)
  os.replace(tmp, path)
  with open(tmp, 'w') as f:
    json.dump(record, f, indent=2)
  os.replace(tmp, path[:-len('.npz')] + '.json')


def _load(path: str) -> tuple:
  with open(path[:-len('.npz')] + '.json') as f:
    record = json.load(f)
  with np.load(path) as data:
    trainable = [data[f'trainable_{i}'] for i in range(record['num_trainable'])]
    non_trainable = [data[f'non_trainable_{i}'] for i in range(record['num_non_trainable'])]
  return tff.learning.models.ModelWeights(trainable, non_trainable), record


def load_or_train(task, task_config: TaskConfig, config: ExperimentConfig, cache_dir: str,
                  log: Callable[[str], None] = print) -> Optional[Pretrained]:
  """The cached pretrained model for this config, training and caching it first if absent.

  None when `config.pretrain_rounds` is 0. Logs the MA/BA at the end of
  pretraining.
  """
  if not config.pretrain_rounds:
    return None
  path = cache_path(cache_dir, task_config, config)
  os.makedirs(os.path.dirname(path) or '.', exist_ok=True)
  # One process trains, concurrent runs with the same key (grid cells) wait and load.
  with open(path + '.lock', 'w') as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    loaded = os.path.exists(path) and os.path.exists(path[:-len('.npz')] + '.json')
    if loaded:
      weights, record = _load(path)
    else:
      weights, main_accuracy, backdoor_accuracy = train(task, config, log)
      record = dict(key=cache_key(task_config, config), main_accuracy=main_accuracy,
                    backdoor_accuracy=backdoor_accuracy, num_trainable=len(weights.trainable),
                    num_non_trainable=len(weights.non_trainable))
      _save(path, weights, record)
  pretrained = Pretrained(weights, record['main_accuracy'], record['backdoor_accuracy'],
                          config.pretrain_rounds, path, loaded)
  log(f'pretrained: {config.pretrain_rounds} rounds of clean FedAvg, MA '
      f'{pretrained.main_accuracy:.3f} BA {pretrained.backdoor_accuracy:.3f} '
      f'({"loaded from" if loaded else "cached in"} {path})')
  return pretrained
