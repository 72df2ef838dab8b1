"""The experiment loop: a federated backdoor run, round by round, recorded as it goes.

The training binary (`experiments/run.py`), the defense grid and the
benchmarks all go through these functions: build the learning process for a
defense, make the round's client datasets (attacking clients poison theirs),
evaluate main-task and backdoor accuracy on the server model, checkpoint the
process state and release every finished round (JSON lines, CSV,
TensorBoard), so that an interrupted run continues where it stopped.
"""

import asyncio
import dataclasses
import json
import logging
import os
import shutil
import time
from typing import Callable

import numpy as np
import tensorflow as tf
import tensorflow_federated as tff

from experiments import attacks
from experiments import client_work
from experiments.attacks import crafted
from experiments import defenses
from experiments import plots
from experiments.config import ExperimentConfig
from tff_flame import learning


def malicious_clients(num_clients: int, fraction: float, seed: int) -> np.ndarray:
  """The fixed set of malicious client ids for a run (round(fraction * n) of them)."""
  rng = np.random.default_rng([seed, 1])
  count = int(round(fraction * num_clients))
  return np.sort(rng.choice(num_clients, size=count, replace=False))


def element_spec(task, config: ExperimentConfig):
  x, y = task.client_data[0]
  return client_work.flagged_dataset(x[:1], y[:1], False).batch(config.batch_size).element_spec


def build_process(task, config: ExperimentConfig) -> tff.learning.templates.LearningProcess:
  """Unweighted FedAvg whose clients may attack and whose server runs the defense.

  Seeds TF before tracing, so the initial model (built inside the TFF
  computation, run in TFF's worker) is the same in every run with a seed.
  """
  tf.keras.utils.set_random_seed(config.seed)
  work = client_work.build_client_work(
      task.model_fn, element_spec(task, config), config.client_learning_rate,
      attacks.build_attack(config))

  @tff.tensorflow.computation()
  def initial_model_weights_fn():
    return tff.learning.models.ModelWeights.from_model(task.model_fn())

  aggregator = defenses.create_with_ground_truth(
      defenses.defense_factory(config), initial_model_weights_fn.type_signature.result.trainable)
  return learning.compose_fed_avg_with_global_model(
      initial_model_weights_fn, work, aggregator,
      tff.learning.optimizers.build_sgdm(config.server_learning_rate))


def round_datasets(task, client_ids, malicious_ids, round_num: int,
                   config: ExperimentConfig, attack=None) -> list:
  """The round's `(x, y, is_malicious)` datasets; attacking clients poison theirs.

  The attack (default: the configured one) decides which trigger part the k-th
  malicious client of the population stamps (DBA: k mod num_trigger_parts).
  """
  malicious_ids = list(malicious_ids)
  attack = attacks.build_attack(config) if attack is None else attack
  attacking = config.attacking(round_num) and attack.poisons_data
  datasets = []
  for cid in client_ids:
    x, y = task.client_data[cid]
    is_attacker = attacking and cid in malicious_ids
    if is_attacker:
      rng = np.random.default_rng([config.seed, round_num, int(cid)])
      part = attack.trigger_part(malicious_ids.index(cid), task.num_trigger_parts)
      x, y = task.poison_fn(x, y, config.data_poisoning_rate, rng, trigger_part=part)
    datasets.append(_client_dataset(x, y, is_attacker, round_num, config))
  return datasets


def _client_dataset(x, y, malicious: bool, round_num: int, config: ExperimentConfig):
  """A client's `(x, y, is_malicious)` batches: `client_epochs` shuffled passes."""
  return (client_work.flagged_dataset(x, y, malicious)
          .shuffle(max(len(x), 1), seed=config.seed + round_num)
          .repeat(config.client_epochs).batch(config.batch_size))


def crafted_round_data(task, client_ids, malicious_ids, round_num: int, config: ExperimentConfig,
                       attack: crafted.CraftedAttack, global_weights: list) -> list:
  """The round's client data for a crafted attack (`client_work.crafted_client_data`).

  In an attack round the round's malicious clients send what `attack.craft`
  returns, from what they know (`crafted.AttackerView`: G, their own data);
  every other client trains on its own data.
  """
  malicious_ids = list(malicious_ids)
  attackers = [c for c in client_ids if c in malicious_ids] if config.attacking(round_num) else []
  updates = {}
  if attackers:
    view = crafted.AttackerView(
        round_num=round_num, global_weights=[np.asarray(w) for w in global_weights],
        data={c: task.client_data[c] for c in attackers},
        attacker_index={c: malicious_ids.index(c) for c in attackers},
        model_fn=task.model_fn, poison_fn=task.poison_fn, trigger=task.trigger, config=config,
        rng=np.random.default_rng([config.seed, round_num, 7]))
    updates = attack.craft(view)
  data = []
  for cid in client_ids:
    x, y = task.client_data[cid]
    if cid in updates:
      x, y = x[:0], y[:0]  # it sends its crafted update and trains on nothing
    data.append(client_work.crafted_client_data(
        _client_dataset(x, y, False, round_num, config), global_weights, updates.get(cid)))
  return data


class OutputDirError(ValueError):
  """The output folder holds something this run must not overwrite."""


# What a run writes into its output folder (and `--fresh` removes).
CHECKPOINT_DIR = 'checkpoints'
RUN_CONFIG = 'run_config.json'
ROUNDS_JSONL = 'rounds.jsonl'
METRICS_CSV = 'metrics.csv'
TENSORBOARD_DIR = 'tensorboard'
SUMMARY = 'summary.json'
PLOT = 'metrics.png'
ATTACK_STATE_DIR = 'attack_state'
OUTPUTS = (CHECKPOINT_DIR, RUN_CONFIG, ROUNDS_JSONL, METRICS_CSV, TENSORBOARD_DIR, SUMMARY, PLOT,
           ATTACK_STATE_DIR)


def run_identity(task, config: ExperimentConfig, task_config=None) -> dict:
  """What must match for a run to continue another: everything but `rounds`."""
  experiment = dataclasses.asdict(config)
  experiment.pop('rounds')
  return dict(task=task.name, num_clients=len(task.client_data),
              task_config=None if task_config is None else dataclasses.asdict(task_config),
              experiment=experiment)


def prepare_output_dir(output_dir: str, identity: dict, fresh: bool = False) -> None:
  """Makes `output_dir` ready to start or continue the run `identity`.

  `fresh` removes what an earlier run wrote there (only the files listed in
  `OUTPUTS`). Without it, a folder holding another configuration's run, or
  results without the checkpoints to continue them, is an `OutputDirError`.
  """
  if fresh:
    for name in OUTPUTS:
      path = os.path.join(output_dir, name)
      if os.path.isdir(path):
        shutil.rmtree(path)
      elif os.path.exists(path):
        os.remove(path)
  config_path = os.path.join(output_dir, RUN_CONFIG)
  hint = 'pass --fresh to start over there, or choose another --output_dir'
  if os.path.exists(config_path):
    with open(config_path) as f:
      saved = json.load(f)
    if saved != identity:
      differing = sorted(
          k for part in ('task_config', 'experiment')
          for k in set((saved.get(part) or {})) | set((identity.get(part) or {}))
          if (saved.get(part) or {}).get(k) != (identity.get(part) or {}).get(k)) or [
              k for k in ('task', 'num_clients') if saved.get(k) != identity.get(k)]
      raise OutputDirError(
          f'--output_dir={output_dir} holds a run with a different configuration '
          f'(different {", ".join(differing) or "settings"}); {hint}.')
    return
  leftovers = [n for n in OUTPUTS if os.path.exists(os.path.join(output_dir, n))]
  if leftovers:
    raise OutputDirError(f'--output_dir={output_dir} holds results of another run '
                         f'({", ".join(leftovers)}) that cannot be continued; {hint}.')
  os.makedirs(output_dir, exist_ok=True)
  with open(config_path, 'w') as f:
    json.dump(identity, f, indent=2)


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


class _JsonLinesReleaseManager(tff.program.ReleaseManager):
  """`rounds.jsonl`: one JSON row per round; like TFF's CSV manager, releasing
  round r first drops the rows of rounds >= r (those a resumed run redoes)."""

  def __init__(self, path: str):
    self._path = path
    self.rows = []
    if os.path.exists(path):
      with open(path) as f:
        self.rows = [json.loads(line) for line in f if line.strip()]

  async def release(self, value, key) -> None:
    if any(row['round'] >= key for row in self.rows):
      self.rows = [row for row in self.rows if row['round'] < key]
      with open(self._path + '.tmp', 'w') as f:
        f.writelines(json.dumps(row) + '\n' for row in self.rows)
      os.replace(self._path + '.tmp', self._path)
    self.rows.append(value)
    with open(self._path, 'a') as f:
      f.write(json.dumps(value) + '\n')


class _TensorBoardRows(tff.program.ReleaseManager):
  """The numeric fields of a row as TensorBoard scalars (None is left out)."""

  def __init__(self, summary_dir: str):
    self._manager = tff.program.TensorBoardReleaseManager(summary_dir)

  async def release(self, value, key) -> None:
    await self._manager.release(
        {k: float(v) for k, v in value.items() if k != 'round' and v is not None}, key=key)


class _RoundReleaseManager(tff.program.ReleaseManager):
  """Turns `run_training_process`'s metrics of a round into the harness's row,
  logs it as one console line and releases it to the `managers`.

  Round 0 (the evaluation of the initial model) is not a training round and
  is left out.
  """

  def __init__(self, config: ExperimentConfig, managers, log, start_round: int):
    self._config = config
    self._managers = managers
    self._log = log
    self._start_round = start_round
    self._start = time.monotonic()

  async def release(self, value, key) -> None:
    if key == 0:
      return
    config = self._config
    row = dict(round=int(key), main_accuracy=float(value['evaluation/main_accuracy']),
               backdoor_accuracy=float(value['evaluation/backdoor_accuracy']),
               attacking=config.attacking(key),
               **_scalar_measurements(value['aggregator']))
    row.setdefault('num_malicious', int(value['client_work']['num_malicious']))
    for manager in self._managers:
      await manager.release(row, key=key)
    elapsed = time.monotonic() - self._start
    done = key - self._start_round + 1
    eta = elapsed / done * (config.rounds - key)
    admitted = (f" admitted {int(row['num_admitted'])}/{int(row['num_clients'])}"
                f" TPR {_fmt(row['tpr'])} TNR {_fmt(row['tnr'])}"
                if 'num_admitted' in row else '')
    self._log(f'round {key}/{config.rounds} elapsed {elapsed:.0f}s eta {eta:.0f}s '
              f"MA {row['main_accuracy']:.3f} BA {row['backdoor_accuracy']:.3f} "
              f"malicious {int(row['num_malicious'])}/{config.clients_per_round}{admitted}")


class _Rounds:
  """The learning process as `run_training_process` drives it, one round at a time.

  `next(state, round_num)` samples the round's clients and builds their data
  from the state (a crafted attack reads G there), and after a crafted
  attack's round saves what the attackers remember (`attack_state/`); the
  initial state holds the pretrained model when there is one.
  """

  def __init__(self, process, task, config: ExperimentConfig, attack, output_dir: str,
               initial_weights=None):
    self._process = process
    self._task = task
    self._config = config
    self._attack = attack
    self._output_dir = output_dir
    self._initial_weights = initial_weights
    num_clients = len(task.client_data)
    self._sample = client_sampler(num_clients, config)
    self._malicious = malicious_clients(num_clients, config.malicious_fraction,
                                        config.seed).tolist()

  def initialize(self):
    state = self._process.initialize()
    if self._initial_weights is not None:
      state = self._process.set_model_weights(state, self._initial_weights)
    return state

  def next(self, state, round_num: int):
    client_ids = self._sample(round_num)
    if not self._attack.sends_crafted_updates:
      return self._process.next(state, round_datasets(
          self._task, client_ids, self._malicious, round_num, self._config, self._attack))
    weights = self._process.get_model_weights(state).trainable
    output = self._process.next(state, crafted_round_data(
        self._task, client_ids, self._malicious, round_num, self._config, self._attack, weights))
    save_attack_state(self._output_dir, round_num, self._attack.state())
    return output


def _attack_state_path(output_dir: str, round_num: int) -> str:
  return os.path.join(output_dir, ATTACK_STATE_DIR, f'round_{round_num}.json')


def save_attack_state(output_dir: str, round_num: int, state: dict) -> None:
  """What a crafted attack's attackers remember after `round_num` (written atomically)."""
  path = _attack_state_path(output_dir, round_num)
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path + '.tmp', 'w') as f:
    json.dump(state, f)
  os.replace(path + '.tmp', path)


def load_attack_state(output_dir: str, round_num: int) -> dict:
  """The attack state saved after `round_num`; OutputDirError if a resumed run lacks it."""
  path = _attack_state_path(output_dir, round_num)
  if not os.path.exists(path):
    raise OutputDirError(f'--output_dir={output_dir} has a checkpoint after round {round_num} '
                         f'but not the attack state {path}; pass --fresh to start over.')
  with open(path) as f:
    return json.load(f)


def client_sampler(num_clients: int, config: ExperimentConfig) -> Callable[[int], list]:
  """The round's client ids (sorted); they depend only on (seed, round)."""
  sample = tff.simulation.build_uniform_sampling_fn(
      list(range(num_clients)), replace=False, random_seed=int(config.seed))
  return lambda round_num: sorted(sample(round_num, config.clients_per_round))


def run_experiment(task, config: ExperimentConfig, output_dir: str,
                   log: Callable[[str], None] = logging.info, *, task_config=None,
                   fresh: bool = False, pretrained=None) -> dict:
  """Trains to round `config.rounds`, evaluating MA/BA after each; returns the summary.

  Built on `tff.simulation.run_training_process`: the process state is
  checkpointed after every round (`tff.program.FileProgramStateManager` in
  `output_dir/checkpoints`), so calling this again with the same arguments
  after an interruption continues after the last saved round, and ends with
  the results of an uninterrupted run: clients are sampled from (seed,
  round), attackers and poisoning from (seed, round, client), and the
  defense's own state (FLAME's noise seed and round) is in the checkpoint.
  `fresh` starts over; a folder holding a different run is an
  `OutputDirError` (see `prepare_output_dir`).

  Each round is released as a row to `rounds.jsonl`, `metrics.csv`
  (`tff.program.CSVFileReleaseManager`) and `tensorboard/`
  (`tff.program.TensorBoardReleaseManager`), and logged as one line; the
  end writes `summary.json` and `metrics.png`. With `pretrained` (an
  `experiments.pretrain.Pretrained`) the run starts from its weights and the
  summary records its MA/BA under `pretrain`.
  """
  num_clients = len(task.client_data)
  config.validate(num_clients)
  prepare_output_dir(output_dir, run_identity(task, config, task_config), fresh)
  state_manager = tff.program.FileProgramStateManager(
      os.path.join(output_dir, CHECKPOINT_DIR), keep_total=2, keep_first=False)
  loop = asyncio.new_event_loop()
  asyncio.set_event_loop(loop)
  last_saved = max(loop.run_until_complete(state_manager.get_versions()) or [0])
  if last_saved > config.rounds:
    raise OutputDirError(f'--output_dir={output_dir} holds a run already at round '
                         f'{last_saved}, past --rounds={config.rounds}; pass --fresh to '
                         'start over or a larger --rounds to continue it.')
  malicious = malicious_clients(num_clients, config.malicious_fraction, config.seed).tolist()
  process = build_process(task, config)
  attack = attacks.build_attack(config)
  if attack.sends_crafted_updates and last_saved:
    attack.restore(load_attack_state(output_dir, last_saved))
  keras_model = task.model_fn()

  def evaluate(state, unused_data):
    process.get_model_weights(state).assign_weights_to(keras_model)
    return dict(main_accuracy=task.main_accuracy(keras_model),
                backdoor_accuracy=task.backdoor_accuracy(keras_model, attack.trigger_values()))

  jsonl = _JsonLinesReleaseManager(os.path.join(output_dir, ROUNDS_JSONL))
  recorder = _RoundReleaseManager(config, [
      jsonl, tff.program.CSVFileReleaseManager(os.path.join(output_dir, METRICS_CSV),
                                               key_fieldname='round'),
      _TensorBoardRows(os.path.join(output_dir, TENSORBOARD_DIR))], log, last_saved + 1)
  if last_saved:
    log(f'continuing {output_dir} after round {last_saved} (--fresh starts over)')
  start = time.monotonic()
  tff.simulation.run_training_process(
      _Rounds(process, task, config, attack, output_dir,
              None if pretrained is None else pretrained.weights),
      lambda round_num: round_num, config.rounds,
      evaluation_fn=evaluate, evaluation_selection_fn=lambda r: None,
      program_state_manager=state_manager, metrics_managers=[recorder])
  rows = [r for r in jsonl.rows if r['round'] <= config.rounds]
  summary = dict(config=dataclasses.asdict(config), task=task.name,
                 num_clients=num_clients, malicious_clients=malicious,
                 final=rows[-1] if rows else None, seconds=time.monotonic() - start,
                 pretrain=None if pretrained is None else pretrained.summary())
  with open(os.path.join(output_dir, SUMMARY), 'w') as f:
    json.dump(summary, f, indent=2)
  plots.plot_rounds(rows, os.path.join(output_dir, PLOT),
                    title=f'{task.name}: defense={config.defense} attack={config.attack}')
  return summary
