"""The experiment loop: a federated backdoor run, round by round, recorded as it goes.

The training binary (`experiments/run.py`), the defense grid and the
benchmarks all go through these functions: build the learning process for a
defense, make the round's client datasets (attacking clients poison theirs),
evaluate main-task and backdoor accuracy on the server model, and append every
finished round to `rounds.jsonl` so that an interrupted run keeps what it did.
"""

import dataclasses
import json
import logging
import os
import time
from typing import Callable

import numpy as np
import tensorflow as tf
import tensorflow_federated as tff

from experiments import attacks
from experiments import defenses
from experiments import plots
from experiments.config import ExperimentConfig
from experiments.config import TaskConfig
from tasks import registry
from tff_flame import learning


def load_task(task_config: TaskConfig, seed: int):
  """The configured task (a `tasks.Task`); ValueError names the flag or file at fault."""
  options = dataclasses.asdict(task_config)
  return registry.load_task(options.pop('task'), seed=seed, **options)


def malicious_clients(num_clients: int, fraction: float, seed: int) -> np.ndarray:
  """The fixed set of malicious client ids for a run (round(fraction * n) of them)."""
  rng = np.random.default_rng([seed, 1])
  count = int(round(fraction * num_clients))
  return np.sort(rng.choice(num_clients, size=count, replace=False))


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
      attacks.build_attack(config))

  @tff.tensorflow.computation()
  def initial_model_weights_fn():
    return tff.learning.models.ModelWeights.from_model(task.model_fn())

  aggregator = defenses.create_with_ground_truth(
      defenses.defense_factory(config), initial_model_weights_fn.type_signature.result.trainable)
  return learning.compose_fed_avg_with_global_model(
      initial_model_weights_fn, client_work, aggregator,
      tff.learning.optimizers.build_sgdm(config.server_learning_rate))


def round_datasets(task, client_ids, malicious_ids, round_num: int,
                   config: ExperimentConfig) -> list:
  """The round's `(x, y, is_malicious)` datasets; attacking clients poison theirs.

  The attack decides which trigger part the k-th malicious client of the
  population stamps (DBA: k mod num_trigger_parts).
  """
  malicious_ids = list(malicious_ids)
  attack = attacks.build_attack(config)
  attacking = config.attacking(round_num) and attack.poisons_data
  datasets = []
  for cid in client_ids:
    x, y = task.client_data[cid]
    is_attacker = attacking and cid in malicious_ids
    if is_attacker:
      rng = np.random.default_rng([config.seed, round_num, int(cid)])
      part = attack.trigger_part(malicious_ids.index(cid), task.num_trigger_parts)
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
                   log: Callable[[str], None] = logging.info, pretrained=None) -> dict:
  """Trains for `config.rounds`, evaluating MA/BA after each; returns the summary.

  Writes `rounds.jsonl` (one line per finished round), `summary.json` and
  `metrics.png` into `output_dir`. With `pretrained` (an
  `experiments.pretrain.Pretrained`) the run starts from its weights and the
  summary records its MA/BA under `pretrain`.
  """
  num_clients = len(task.client_data)
  config.validate(num_clients)
  os.makedirs(output_dir, exist_ok=True)
  rounds_path = os.path.join(output_dir, 'rounds.jsonl')
  open(rounds_path, 'w').close()
  malicious = malicious_clients(num_clients, config.malicious_fraction, config.seed).tolist()
  process = build_process(task, config)
  state = process.initialize()
  if pretrained is not None:
    state = process.set_model_weights(state, pretrained.weights)
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
                 final=rows[-1] if rows else None, seconds=time.monotonic() - start,
                 pretrain=None if pretrained is None else pretrained.summary())
  with open(os.path.join(output_dir, 'summary.json'), 'w') as f:
    json.dump(summary, f, indent=2)
  plots.plot_rounds(rows, os.path.join(output_dir, 'metrics.png'),
              title=f'{task.name}: defense={config.defense} attack={config.attack}')
  return summary
