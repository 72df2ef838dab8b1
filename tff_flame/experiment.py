"""Runs a federated backdoor experiment round by round and records it.

The training binary (`tasks/run.py`), experiment grids and benchmarks all go
through these functions: build the learning process for a defense, make the
round's client datasets (malicious clients poison theirs), evaluate main-task
and backdoor accuracy on the server model, and append every finished round to
`rounds.jsonl` so that an interrupted run keeps what it did.
"""

import dataclasses
import json
import logging
import os
import time
from typing import Callable, Optional

import numpy as np
import tensorflow as tf
import tensorflow_federated as tff

from tff_flame import flame_factory
from tff_flame import learning

DEFENSES = ('none', 'flame')
ATTACKS = ('none', 'data_poisoning')


@dataclasses.dataclass
class ExperimentConfig:
  """What a run does; every field is a flag of the training binary."""
  defense: str = 'flame'
  attack: str = 'data_poisoning'
  rounds: int = 10
  clients_per_round: int = 10
  malicious_fraction: float = 0.3
  data_poisoning_rate: float = 0.5
  attack_start_round: int = 1
  client_epochs: int = 2
  batch_size: int = 20
  client_learning_rate: float = 0.1
  server_learning_rate: float = 1.0
  noise_lambda: float = 0.001
  clustering_space: str = 'update'
  seed: int = 0

  def validate(self, num_clients: int) -> None:
    """Raises ValueError naming the field (flag) that is out of range."""
    if self.defense not in DEFENSES:
      raise ValueError(f'defense must be one of {DEFENSES}, got {self.defense!r}.')
    if self.attack not in ATTACKS:
      raise ValueError(f'attack must be one of {ATTACKS}, got {self.attack!r}.')
    if not 1 <= self.clients_per_round <= num_clients:
      raise ValueError(f'clients_per_round must be in [1, num_clients={num_clients}], '
                       f'got {self.clients_per_round}.')
    for name in ('malicious_fraction', 'data_poisoning_rate'):
      if not 0.0 <= getattr(self, name) <= 1.0:
        raise ValueError(f'{name} must be in [0, 1], got {getattr(self, name)}.')


def malicious_clients(num_clients: int, fraction: float, seed: int) -> np.ndarray:
  """The fixed set of malicious client ids for a run (round(fraction * n) of them)."""
  rng = np.random.default_rng([seed, 1])
  count = int(round(fraction * num_clients))
  return np.sort(rng.choice(num_clients, size=count, replace=False))


def tff_model_fn(task, batch_size: int) -> Callable[[], tff.learning.models.VariableModel]:
  """Wraps the task's Keras model for TFF (sparse labels, logits)."""
  x, y = task.client_data[0]
  input_spec = (tf.TensorSpec([None] + list(x.shape[1:]), tf.as_dtype(x.dtype)),
                tf.TensorSpec([None] + list(y.shape[1:]), tf.as_dtype(y.dtype)))

  def model_fn():
    return tff.learning.models.from_keras_model(
        task.model_fn(), input_spec=input_spec,
        loss=tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=[tf.keras.metrics.SparseCategoricalAccuracy()])
  return model_fn


def build_process(task, config: ExperimentConfig) -> tff.learning.templates.LearningProcess:
  """FedAvg (unweighted: FLAME averages admitted clients equally) with the chosen defense."""
  model_fn = tff_model_fn(task, config.batch_size)
  client_optimizer = tff.learning.optimizers.build_sgdm(config.client_learning_rate)
  server_optimizer = tff.learning.optimizers.build_sgdm(config.server_learning_rate)
  if config.defense == 'flame':
    flame = flame_factory.FlameFactory(
        noise_lambda=config.noise_lambda, seed=config.seed,
        clustering_space=config.clustering_space)
    return learning.build_flame_fed_avg(model_fn, client_optimizer, server_optimizer, flame)
  return tff.learning.algorithms.build_unweighted_fed_avg(
      model_fn, client_optimizer, server_optimizer,
      model_aggregator=tff.aggregators.UnweightedMeanFactory())


def client_dataset(x: np.ndarray, y: np.ndarray, config: ExperimentConfig, seed: int) -> tf.data.Dataset:
  return (tf.data.Dataset.from_tensor_slices((x, y)).shuffle(len(x), seed=seed)
          .repeat(config.client_epochs).batch(config.batch_size))


def round_datasets(task, client_ids, malicious: set, round_num: int,
                   config: ExperimentConfig) -> list:
  """The round's client datasets; malicious clients poison theirs when attacking."""
  attacking = config.attack != 'none' and round_num >= config.attack_start_round
  datasets = []
  for cid in client_ids:
    x, y = task.client_data[cid]
    if attacking and cid in malicious:
      rng = np.random.default_rng([config.seed, round_num, int(cid)])
      x, y = task.poison_fn(x, y, config.data_poisoning_rate, rng)
    datasets.append(client_dataset(x, y, config, seed=config.seed + round_num))
  return datasets


def _scalar_measurements(aggregator_metrics) -> dict:
  out = {}
  for key in ('num_clients', 'num_admitted', 'clipping_bound', 'noise_stddev', 'fallback'):
    if key in aggregator_metrics:
      out[key] = float(np.asarray(aggregator_metrics[key]))
  return out


def run_experiment(task, config: ExperimentConfig, output_dir: str,
                   log: Callable[[str], None] = logging.info) -> dict:
  """Trains for `config.rounds`, evaluating MA/BA after each; returns the summary.

  Writes `rounds.jsonl` (one line per finished round), `summary.json` and
  `metrics.png` into `output_dir`.
  """
  num_clients = len(task.client_data)
  config.validate(num_clients)
  os.makedirs(output_dir, exist_ok=True)
  rounds_path = os.path.join(output_dir, 'rounds.jsonl')
  open(rounds_path, 'w').close()
  malicious = set(malicious_clients(num_clients, config.malicious_fraction, config.seed).tolist())
  process = build_process(task, config)
  state = process.initialize()
  keras_model = task.model_fn()
  rng = np.random.default_rng([config.seed, 2])
  start = time.monotonic()
  rows = []
  for round_num in range(1, config.rounds + 1):
    client_ids = np.sort(rng.choice(num_clients, config.clients_per_round, replace=False))
    datasets = round_datasets(task, client_ids, malicious, round_num, config)
    output = process.next(state, datasets)
    state = output.state
    process.get_model_weights(state).assign_weights_to(keras_model)
    row = dict(round=round_num, main_accuracy=task.main_accuracy(keras_model),
               backdoor_accuracy=task.backdoor_accuracy(keras_model),
               num_malicious=int(sum(c in malicious for c in client_ids)),
               **_scalar_measurements(output.metrics['aggregator']))
    rows.append(row)
    with open(rounds_path, 'a') as f:
      f.write(json.dumps(row) + '\n')
    elapsed = time.monotonic() - start
    eta = elapsed / round_num * (config.rounds - round_num)
    admitted = (f" admitted {int(row['num_admitted'])}/{int(row['num_clients'])}"
                if 'num_admitted' in row else '')
    log(f'round {round_num}/{config.rounds} elapsed {elapsed:.0f}s eta {eta:.0f}s '
        f"MA {row['main_accuracy']:.3f} BA {row['backdoor_accuracy']:.3f} "
        f"malicious {row['num_malicious']}/{len(client_ids)}{admitted}")
  summary = dict(config=dataclasses.asdict(config), task=task.name,
                 num_clients=num_clients, malicious_clients=sorted(malicious),
                 final=rows[-1] if rows else None, seconds=time.monotonic() - start)
  with open(os.path.join(output_dir, 'summary.json'), 'w') as f:
    json.dump(summary, f, indent=2)
  plot_rounds(rows, os.path.join(output_dir, 'metrics.png'),
              title=f'{task.name}: defense={config.defense} attack={config.attack}')
  return summary


def plot_rounds(rows: list, path: str, title: str = '') -> None:
  """PNG of MA and BA per round (and admitted share when the defense filters)."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  rounds = [r['round'] for r in rows]
  fig, ax = plt.subplots(figsize=(6, 3.5))
  ax.plot(rounds, [r['main_accuracy'] for r in rows], marker='o', label='main accuracy (MA)')
  ax.plot(rounds, [r['backdoor_accuracy'] for r in rows], marker='s', label='backdoor accuracy (BA)')
  if rows and 'num_admitted' in rows[0]:
    ax.plot(rounds, [r['num_admitted'] / r['num_clients'] for r in rows], ls='--',
            label='admitted share')
  ax.set_xlabel('round')
  ax.set_ylim(-0.02, 1.02)
  ax.set_title(title)
  ax.legend(loc='best', fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)
