"""Wall time and memory of one training round with FLAME vs the plain mean.

  python -m benchmarks.round_overhead [--clients=10,30,100] [--repeats=3]

Same clients, data and model for both: the offline digits task (8x8 CNN),
one round of `experiments.loop.build_process` (local training included), each
defense in a TFF worker of its own so its peak memory can be read. Prints
ratios from this one run.
"""

import dataclasses
import json

from absl import app
from absl import flags

from benchmarks import measure
from experiments import config as config_lib
from tasks import registry
from tff_flame import tff_worker

_CLIENTS = flags.DEFINE_list('clients', ['10', '30', '100'], 'Clients per round to time.')
_REPEATS = flags.DEFINE_integer('repeats', 3, 'Timed rounds (median reported).', lower_bound=1)
_JSON = flags.DEFINE_string('json', None, 'Also write the numbers to this JSON file.')


def time_round(task, config, repeats):
  """(median seconds of one round, worker peak MB) for `config`."""
  with tff_worker.local_worker():
    seconds = measure.median_seconds(measure.first_round(task, config), repeats)
    return seconds, measure.worker_peak_mb()


def main(argv):
  del argv
  sizes = [int(c) for c in _CLIENTS.value]
  task = registry.load_task(config_lib.TaskConfig(task='digits', num_clients=max(sizes)), seed=0)
  base = config_lib.ExperimentConfig(attack='constrain_and_scale', client_epochs=1)
  print(f"{'n':>5} {'mean round s':>13} {'FLAME round s':>14} {'FLAME/mean':>11} "
        f"{'mean peak MB':>13} {'FLAME peak MB':>14}")
  results = []
  for n in sizes:
    rows = {}
    for defense in ('none', 'flame'):
      config = dataclasses.replace(base, defense=defense, clients_per_round=n)
      rows[defense] = time_round(task, config, _REPEATS.value)
    (mean_s, mean_mb), (flame_s, flame_mb) = rows['none'], rows['flame']
    results.append(dict(n=n, mean_s=mean_s, flame_s=flame_s, ratio=flame_s / mean_s,
                        mean_peak_mb=mean_mb, flame_peak_mb=flame_mb))
    print(f'{n:>5} {mean_s:>13.2f} {flame_s:>14.2f} {flame_s / mean_s:>11.3f} '
          f'{mean_mb:>13.0f} {flame_mb:>14.0f}', flush=True)
  if _JSON.value:
    with open(_JSON.value, 'w') as f:
      json.dump(results, f, indent=2)


if __name__ == '__main__':
  app.run(main)
