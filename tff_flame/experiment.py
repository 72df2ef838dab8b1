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

from tff_flame import attacks
from tff_flame import defense_registry
from tff_flame import gathered_factory
from tff_flame import learning

DEFENSES = defense_registry.DEFENSES
ATTACKS = attacks.ATTACKS


@dataclasses.dataclass
class ExperimentConfig:
  """What a run does; every field is a flag of the training binary."""
  defense: str = 'flame'
  attack: str = 'constrain_and_scale'
  rounds: int = 15
  clients_per_round: int = 10
  malicious_fraction: float = 0.3
  data_poisoning_rate: float = 0.5
  attack_start_round: int = 8
  attack_rounds: Optional[int] = None
  alpha: float = 0.9
  scale_factor: Optional[float] = None
  pgd_radius: float = 1.0
  client_epochs: int = 3
  batch_size: int = 20
  client_learning_rate: float = 0.1
  server_learning_rate: float = 1.0
  noise_lambda: float = 0.001
  clustering_space: str = 'update'
  num_byzantine: Optional[int] = None
  trim_fraction: float = 0.2
  norm_bound: float = 1.0
  dp_noise_multiplier: float = 0.01
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
    if self.attack_rounds is not None and self.attack_rounds < 0:
      raise ValueError(f'attack_rounds must be >= 0, got {self.attack_rounds}.')
    self.attack_config()  # validates alpha, scale_factor, pgd_radius
    defense_factory(self)  # validates the defense's parameters

  def attack_config(self) -> attacks.AttackConfig:
    """The attack; gamma defaults to model replacement shared by the expected attackers."""
    scale = self.scale_factor
    if scale is None:
      scale = attacks.model_replacement_scale(
          self.clients_per_round, self.server_learning_rate,
          round(self.malicious_fraction * self.clients_per_round))
    return attacks.AttackConfig(kind=self.attack, alpha=self.alpha, scale_factor=scale,
                                pgd_radius=self.pgd_radius)

  def attacking(self, round_num: int) -> bool:
    """Whether malicious clients attack in this round (1-based)."""
    if self.attack == 'none' or round_num < self.attack_start_round:
      return False
    return self.attack_rounds is None or round_num < self.attack_start_round + self.attack_rounds


def malicious_clients(num_clients: int, fraction: float, seed: int) -> np.ndarray:
  """The fixed set of malicious client ids for a run (round(fraction * n) of them)."""
  rng = np.random.default_rng([seed, 1])
  count = int(round(fraction * num_clients))
  return np.sort(rng.choice(num_clients, size=count, replace=False))


def defense_factory(config: ExperimentConfig) -> tff.aggregators.UnweightedAggregationFactory:
  """The configured defense; Krum's f defaults to the expected attackers per round."""
  num_byzantine = config.num_byzantine
  if num_byzantine is None:
    num_byzantine = int(round(config.malicious_fraction * config.clients_per_round))
  return defense_registry.build_aggregator(
      config.defense, noise_lambda=config.noise_lambda, clustering_space=config.clustering_space,
      seed=config.seed, num_byzantine=num_byzantine, trim_fraction=config.trim_fraction,
      norm_bound=config.norm_bound, dp_noise_multiplier=config.dp_noise_multiplier,
      clients_per_round=config.clients_per_round)


def element_spec(task, config: ExperimentConfig):
  x, y = task.client_data[0]
  return attacks.flagged_dataset(x[:1], y[:1], False).batch(config.batch_size).element_spec


def build_process(task, config: ExperimentConfig) -> tff.learning.templates.LearningProcess:
  """Unweighted FedAvg whose clients may attack and whose server runs the defense.

  Seeds TF before tracing, so the initial model (built inside the TFF
  computation, run in TFF's worker) is the same in every run with a seed.
  """
  tf.keras.utils.set_random_seed(config.seed)
  client_work = attacks.build_client_work(
      task.model_fn, element_spec(task, config), config.client_learning_rate,
      config.attack_config())

  @tff.tensorflow.computation()
  def initial_model_weights_fn():
    return tff.learning.models.ModelWeights.from_model(task.model_fn())

  model_space = config.defense == 'flame' and config.clustering_space == 'model'
  aggregator = gathered_factory.create_labelled(
      defense_factory(config), initial_model_weights_fn.type_signature.result.trainable,
      with_reference=model_space)
  return learning.compose_fed_avg(
      initial_model_weights_fn, client_work, aggregator,
      tff.learning.optimizers.build_sgdm(config.server_learning_rate), pass_reference=model_space)


def round_datasets(task, client_ids, malicious_ids, round_num: int,
                   config: ExperimentConfig) -> list:
  """The round's `(x, y, is_malicious)` datasets; attacking clients poison theirs.

  With DBA, the k-th malicious client of the population uses trigger part
  k mod num_trigger_parts.
  """
  malicious_ids = list(malicious_ids)
  attacking = config.attacking(round_num)
  datasets = []
  for cid in client_ids:
    x, y = task.client_data[cid]
    is_attacker = attacking and cid in malicious_ids
    if is_attacker:
      rng = np.random.default_rng([config.seed, round_num, int(cid)])
      part = (malicious_ids.index(cid) % task.num_trigger_parts
              if config.attack == 'dba' else None)
      x, y = task.poison_fn(x, y, config.data_poisoning_rate, rng, trigger_part=part)
    datasets.append(attacks.flagged_dataset(x, y, is_attacker)
                    .shuffle(len(x), seed=config.seed + round_num)
                    .repeat(config.client_epochs).batch(config.batch_size))
  return datasets


def _scalar_measurements(aggregator_metrics) -> dict:
  """The round's scalar defense measurements; NaN (e.g. TPR without attackers) -> None."""
  out = {}
  for key in ('num_clients', 'num_admitted', 'num_malicious', 'tpr', 'tnr', 'clipping_bound',
              'noise_stddev', 'fallback'):
    if key in aggregator_metrics:
      value = float(np.asarray(aggregator_metrics[key]))
      out[key] = None if np.isnan(value) else value
  return out


def _fmt(value) -> str:
  return 'n/a' if value is None else f'{value:.2f}'



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
  malicious = malicious_clients(num_clients, config.malicious_fraction, config.seed).tolist()
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
               attacking=config.attacking(round_num),
               **_scalar_measurements(output.metrics['aggregator']))
    row.setdefault('num_malicious', int(output.metrics['client_work']['num_malicious']))
    rows.append(row)
    with open(rounds_path, 'a') as f:
      f.write(json.dumps(row) + '\n')
    elapsed = time.monotonic() - start
    eta = elapsed / round_num * (config.rounds - round_num)
    admitted = (f" admitted {int(row['num_admitted'])}/{int(row['num_clients'])}"
                f" TPR {_fmt(row['tpr'])} TNR {_fmt(row['tnr'])}"
                if 'num_admitted' in row else '')
    log(f'round {round_num}/{config.rounds} elapsed {elapsed:.0f}s eta {eta:.0f}s '
        f"MA {row['main_accuracy']:.3f} BA {row['backdoor_accuracy']:.3f} "
        f"malicious {int(row['num_malicious'])}/{len(client_ids)}{admitted}")
  summary = dict(config=dataclasses.asdict(config), task=task.name,
                 num_clients=num_clients, malicious_clients=malicious,
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
  for key, label in (('tpr', 'filter TPR'), ('tnr', 'filter TNR')):
    if rows and key in rows[0]:
      ax.plot(rounds, [np.nan if r[key] is None else r[key] for r in rows], ls='--',
              label=label)
  ax.set_xlabel('round')
  ax.set_ylim(-0.02, 1.02)
  ax.set_title(title)
  ax.legend(loc='best', fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)
