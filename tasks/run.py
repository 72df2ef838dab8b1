"""Trains FedAvg with or without FLAME on a backdoor task and records MA/BA per round.

  python -m tasks.run --rounds=10 --defense=flame --attack=data_poisoning

Offline default: scikit-learn's handwritten digits split non-IID across
clients. Each round is logged and appended to <output_dir>/rounds.jsonl; the
end writes summary.json and metrics.png.
"""

import logging
import sys

from absl import app
from absl import flags

from tasks import registry
from tff_flame import experiment
from tff_flame import runtime

FLAGS = flags.FLAGS
_TASK = flags.DEFINE_enum('task', 'digits', list(registry.TASKS),
                          'digits (offline 8x8 images), emnist, shakespeare or nbaiot.')
_DEFENSE = flags.DEFINE_enum('defense', 'flame', list(experiment.DEFENSES),
                             'Aggregation defense: ' + ', '.join(experiment.DEFENSES) + '.')
_ATTACK = flags.DEFINE_enum('attack', 'constrain_and_scale', list(experiment.ATTACKS),
                            'What malicious clients do: none, data_poisoning, constrain_and_scale, pgd, dba.')
_ROUNDS = flags.DEFINE_integer('rounds', 15, 'Training rounds.', lower_bound=1)
_NUM_CLIENTS = flags.DEFINE_integer('num_clients', 20, 'Clients in the population.', lower_bound=1)
_CLIENTS_PER_ROUND = flags.DEFINE_integer('clients_per_round', 10, 'Clients per round.',
                                          lower_bound=1)
_MALICIOUS_FRACTION = flags.DEFINE_float('malicious_fraction', 0.3,
                                         'Share of clients that are malicious.',
                                         lower_bound=0.0, upper_bound=1.0)
_POISON_RATE = flags.DEFINE_float('data_poisoning_rate', 0.5,
                                  'Share of a malicious client\'s examples given the trigger.',
                                  lower_bound=0.0, upper_bound=1.0)
_ATTACK_START = flags.DEFINE_integer('attack_start_round', 8, 'First round with attacks.',
                                     lower_bound=1)
_ATTACK_ROUNDS = flags.DEFINE_integer('attack_rounds', None,
                                      'Rounds with attacks from the start round (default: all).',
                                      lower_bound=0)
_ALPHA_CS = flags.DEFINE_float('alpha', 0.9, 'constrain_and_scale: weight of the task loss.',
                               lower_bound=0.0, upper_bound=1.0)
_SCALE = flags.DEFINE_float('scale_factor', None, 'constrain_and_scale: gamma (default '
                            'clients_per_round / (server_learning_rate * expected attackers per round): '
                            'model replacement shared by the attackers).',
                            lower_bound=1e-9)
_PGD_RADIUS = flags.DEFINE_float('pgd_radius', 1.0, 'pgd: L2 radius around the global model.',
                                 lower_bound=1e-9)
_EPOCHS = flags.DEFINE_integer('client_epochs', 3, 'Local epochs per round.', lower_bound=1)
_BATCH = flags.DEFINE_integer('batch_size', 20, 'Client batch size.', lower_bound=1)
_CLIENT_LR = flags.DEFINE_float('client_learning_rate', 0.1, 'Client SGD learning rate.',
                                lower_bound=0.0)
_SERVER_LR = flags.DEFINE_float('server_learning_rate', 1.0, 'Server SGD learning rate.',
                                lower_bound=0.0)
_NOISE = flags.DEFINE_float('noise_lambda', 0.001, 'FLAME noise: sigma = lambda * S_t.',
                            lower_bound=0.0)
_SPACE = flags.DEFINE_enum('clustering_space', 'update', ['update', 'model'],
                           'FLAME clusters client updates or local models.')
_KRUM_F = flags.DEFINE_integer('num_byzantine', None, 'krum, multi_krum: f, the assumed '
                               'attackers per round (default: expected attackers).', lower_bound=0)
_TRIM = flags.DEFINE_float('trim_fraction', 0.2, 'trimmed_mean: beta, share cut at each end.',
                           lower_bound=0.0, upper_bound=0.4999)
_NORM_BOUND = flags.DEFINE_float('norm_bound', 1.0, 'norm_bounding, weak_dp: L2 clip.',
                                 lower_bound=1e-9)
_DP_NOISE = flags.DEFINE_float('dp_noise_multiplier', 0.01,
                               'weak_dp: noise stddev / norm_bound.', lower_bound=0.0)
_ALPHA = flags.DEFINE_float('dirichlet_alpha', 0.5, 'Non-IID knob (smaller: more skewed).',
                            lower_bound=1e-3)
_SEED = flags.DEFINE_integer('seed', 0, 'Seed for data split, sampling, attackers, noise.')
_EMNIST_CACHE = flags.DEFINE_string('emnist_cache_dir', None,
                                    'emnist: where TFF keeps (or downloads) emnist_all.sqlite.')
_SHAKESPEARE_TEXT = flags.DEFINE_string('shakespeare_text', None,
                                        "shakespeare: a play text in 'SPEAKER:' + lines format.")
_SHAKESPEARE_CACHE = flags.DEFINE_string('shakespeare_cache_dir', None,
                                         'shakespeare: TFF cache dir (when no --shakespeare_text).')
_NBAIOT_PATH = flags.DEFINE_string('nbaiot_path', None,
                                   'nbaiot: per-device N-BaIoT folder or a folder of CSVs.')
_NBAIOT_SPLIT = flags.DEFINE_integer('nbaiot_clients_per_device', 5,
                                     'nbaiot: clients each device is split into.', lower_bound=1)
_OUTPUT = flags.DEFINE_string('output_dir', 'output/run', 'Where results are written.')


def load_task():
  return registry.load_task(
      _TASK.value, num_clients=_NUM_CLIENTS.value, seed=_SEED.value,
      dirichlet_alpha=_ALPHA.value, emnist_cache_dir=_EMNIST_CACHE.value,
      shakespeare_text=_SHAKESPEARE_TEXT.value, shakespeare_cache_dir=_SHAKESPEARE_CACHE.value,
      nbaiot_path=_NBAIOT_PATH.value, nbaiot_clients_per_device=_NBAIOT_SPLIT.value)


def main(argv):
  del argv
  logging.getLogger().setLevel(logging.INFO)
  config = experiment.ExperimentConfig(
      defense=_DEFENSE.value, attack=_ATTACK.value, rounds=_ROUNDS.value,
      clients_per_round=_CLIENTS_PER_ROUND.value, malicious_fraction=_MALICIOUS_FRACTION.value,
      data_poisoning_rate=_POISON_RATE.value, attack_start_round=_ATTACK_START.value,
      attack_rounds=_ATTACK_ROUNDS.value, alpha=_ALPHA_CS.value, scale_factor=_SCALE.value,
      pgd_radius=_PGD_RADIUS.value,
      client_epochs=_EPOCHS.value, batch_size=_BATCH.value,
      client_learning_rate=_CLIENT_LR.value, server_learning_rate=_SERVER_LR.value,
      noise_lambda=_NOISE.value, clustering_space=_SPACE.value, num_byzantine=_KRUM_F.value,
      trim_fraction=_TRIM.value, norm_bound=_NORM_BOUND.value,
      dp_noise_multiplier=_DP_NOISE.value, seed=_SEED.value)
  try:
    task = load_task()
    config.validate(len(task.client_data))
  except (ValueError, OSError) as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  with runtime.tff_runtime():
    summary = experiment.run_experiment(task, config, _OUTPUT.value, log=print)
  final = summary['final']
  print(f"final: MA {final['main_accuracy']:.3f} BA {final['backdoor_accuracy']:.3f} "
        f'-> {_OUTPUT.value}/rounds.jsonl, summary.json, metrics.png')
  return 0


if __name__ == '__main__':
  app.run(main)
