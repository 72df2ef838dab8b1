"""Which signal separates attackers who know FLAME from benign clients? Measured on real rounds.

  python -m benchmarks.hardening_candidates --rounds=3,4 --output=docs/hardening_candidates.md

For each attack that crafts its updates (and for no attack), a round of the
evaluation's fashion_mnist setting (20 of 50 clients, 30% malicious) at the
cached pretrained model: the round's benign clients train as the clients do
(`crafted.LocalTrainer`), its attackers craft their updates. On those updates
it measures the candidate signals of the hardened FLAME (issue 16) and the
rounds of the defenses that use them, as the library computes them on the
gathered blocks (no TFF):

- norms relative to S_t (a lower bound on admitted norms);
- update-space cosine similarity between attackers, between an attacker and
  a benign client, and between benign clients (FoolsGold's signal);
- FLAME, FLAME after a norm floor of `NORM_FLOOR` x S_t, FoolsGold per round
  and the hardened FLAME: TPR / TNR.

The hook attacks (constrain-and-scale, DBA, ...) run inside TFF's client work
and are measured by the evaluation instead.
"""

import os

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')

# pylint: disable=g-import-not-at-top,wrong-import-position
import collections

from absl import app
from absl import flags
import numpy as np
import tensorflow as tf

from benchmarks import training_runs
from experiments import attacks
from experiments import config as config_lib
from experiments import loop
from experiments import pretrain
from experiments.attacks import crafted
from tasks import registry
from tff_flame import flame
from tff_flame import hardened
from tff_flame import robust
from tff_flame import tff_worker

NORM_FLOOR = 0.8
ATTACKS = ('none', 'stay_small', 'neurotoxin', 'a3fl', '3dfed', 'defense_in_the_loop')

_ROUNDS = flags.DEFINE_list('rounds', ['3', '4'], 'Rounds to sample (clients from (seed, round)).')
_ATTACKS = flags.DEFINE_list('attacks', list(ATTACKS), 'Attacks (crafted ones, or none).')
_FRACTIONS = flags.DEFINE_list('radius_fractions', ['0.4', '0.7', '1.0'],
                               "stay_small's --radius_fraction values.")
_OUTPUT = flags.DEFINE_string('output', None, 'Markdown file for the tables (default: print).')


def setting(attack: str, **fields) -> tuple:
  """The evaluation's fashion_mnist task config and an experiment config at 20 per round."""
  task_flags = dict(f[2:].split('=', 1) for f in training_runs.TASK_FLAGS['fashion_mnist'])
  task_config = config_lib.TaskConfig(
      task='fashion_mnist', num_clients=int(task_flags['num_clients']),
      fashion_mnist_train_examples=int(task_flags['fashion_mnist_train_examples']),
      fashion_mnist_test_examples=int(task_flags['fashion_mnist_test_examples']))
  config = config_lib.ExperimentConfig(
      attack=attack, defense='flame', clients_per_round=20,
      client_epochs=int(task_flags['client_epochs']),
      pretrain_rounds=int(task_flags['pretrain_rounds']), **fields)
  return task_config, config


def round_updates(task, config, weights: list, round_num: int) -> tuple:
  """([n, d] float32 updates, bool [n] attacker flags) of one round at `weights`."""
  num_clients = len(task.client_data)
  malicious = loop.malicious_clients(num_clients, config.malicious_fraction, config.seed).tolist()
  ids = loop.client_sampler(num_clients, config)(round_num)
  attackers = [c for c in ids if c in malicious] if config.attack != 'none' else []
  updates = {}
  if attackers:
    view = crafted.AttackerView(
        round_num=round_num, global_weights=weights,
        data={c: task.client_data[c] for c in attackers},
        attacker_index={c: malicious.index(c) for c in attackers}, model_fn=task.model_fn,
        poison_fn=task.poison_fn, trigger=task.trigger, config=config,
        rng=np.random.default_rng([config.seed, round_num, 7]))
    updates = attacks.build_attack(config).craft(view)
  trainer = crafted.LocalTrainer(task.model_fn, config.client_learning_rate,
                                 config.client_epochs, config.batch_size)
  rows = []
  for c in ids:
    if c not in updates:
      x, y = task.client_data[c]
      updates[c] = trainer.update(weights, x, y, np.random.default_rng([config.seed, round_num,
                                                                      c]))
    rows.append(crafted.flat(updates[c]).astype(np.float32))
  return np.array(rows), np.array([c in attackers for c in ids])


def signals(rows: np.ndarray, flags_: np.ndarray, global_flat: np.ndarray) -> dict:
  """The candidate signals and the candidate defenses' TPR / TNR on one round."""
  blocks = [collections.OrderedDict(rows=tf.constant(rows), order=tf.range(len(rows)))]
  g = tf.constant(global_flat, tf.float32)
  seed = tf.constant([0, 0], tf.int64)
  norms = np.linalg.norm(rows.astype(np.float64), axis=1)
  bound = np.median(norms)
  unit = rows / norms[:, None]
  cos = unit @ unit.T
  pair = lambda a, b: [cos[i, j] for i in range(len(rows)) for j in range(len(rows))
                       if i < j and flags_[i] == a and flags_[j] == b]
  out = dict(att_norm=norms[flags_] / bound, ben_norm=norms[~flags_] / bound,
             att_att=pair(True, True), att_ben=pair(True, False) + pair(False, True),
             ben_ben=pair(False, False))
  _, plain = flame.flame_round_blocks(blocks, seed, 0.0, global_model=g)
  _, hard = hardened.hardened_round_blocks(blocks, seed, 0.0, global_model=g)
  _, fools = robust.foolsgold_round_blocks(blocks)
  floor = norms >= NORM_FLOOR * bound
  kept = np.flatnonzero(floor)
  sub = [collections.OrderedDict(rows=tf.constant(rows[kept]), order=tf.range(len(kept)))]
  _, floored = flame.flame_round_blocks(sub, seed, 0.0, global_model=g)
  floored_admitted = np.zeros(len(rows), bool)
  floored_admitted[kept] = np.asarray(floored['admitted']).astype(bool)
  for name, admitted in (('flame', plain['admitted']), ('norm_floor', floored_admitted),
                         ('foolsgold', fools['admitted']), ('flame_hardened', hard['admitted'])):
    admitted = np.asarray(admitted).astype(bool)
    out[name] = (float(np.mean(~admitted[flags_])) if flags_.any() else float('nan'),
                 float(np.mean(admitted[~flags_])))
  return out


def _range(values) -> str:
  return '-' if len(values) == 0 else f'{np.mean(values):.2f} ({np.min(values):.2f}-{np.max(values):.2f})'


def markdown(measured: list) -> str:
  lines = ['| attack | round | attackers | norm / S_t: attackers, benign | cosine: attacker-attacker, '
           'attacker-benign, benign-benign | TPR / TNR: flame | norm floor + flame | foolsgold | '
           'flame_hardened |', '|---|---|---|---|---|---|---|---|---|']
  for label, round_num, flags_, s in measured:
    rates = [f'{s[k][0]:.2f} / {s[k][1]:.2f}' for k in ('flame', 'norm_floor', 'foolsgold',
                                                          'flame_hardened')]
    lines.append(f"| {label} | {round_num} | {int(flags_.sum())} of {len(flags_)} | "
                 f"{_range(s['att_norm'])}; {_range(s['ben_norm'])} | {_range(s['att_att'])}; "
                 f"{_range(s['att_ben'])}; {_range(s['ben_ben'])} | " + ' | '.join(rates) + ' |')
  return '\n'.join(lines)


def main(argv):
  del argv
  runs = [(a, {}) for a in _ATTACKS.value if a != 'stay_small']
  if 'stay_small' in _ATTACKS.value:
    runs[1:1] = [('stay_small', dict(radius_fraction=float(f))) for f in _FRACTIONS.value]
  measured = []
  with tff_worker.execution_context():  # pretraining, if the cache lacks the model
    for attack, fields in runs:
      task_config, config = setting(attack, **fields)
      task = registry.load_task(task_config, seed=config.seed)
      pretrained = pretrain.load_or_train(task, task_config, config, 'output/pretrain',
                                          log=lambda line: None)
      weights = [np.asarray(w) for w in pretrained.weights.trainable]
      label = attack + ''.join(f' {k}={v}' for k, v in fields.items())
      for round_num in (int(r) for r in _ROUNDS.value):
        rows, flags_ = round_updates(task, config, weights, round_num)
        measured.append((label, round_num, flags_,
                         signals(rows, flags_, crafted.flat(weights).astype(np.float32))))
        print(f'{label} round {round_num}: done', flush=True)
  table = markdown(measured)
  if _OUTPUT.value:
    with open(_OUTPUT.value, 'w') as f:
      f.write(table + '\n')
  print(table)


if __name__ == '__main__':
  app.run(main)
