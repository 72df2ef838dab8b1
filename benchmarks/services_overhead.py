"""Round time on 1 vs 2 local TFF executor services (the mergeable context's overhead).

  python -m benchmarks.services_overhead [--clients=20,100] [--repeats=3]

One FLAME round of `experiments.loop.build_process` on the offline digits
task (local training included), first on one local worker, then with the
clients split over two local workers through TFF's mergeable context
(`tff_flame.tff_worker.execution_context(num_local=2)`). Both workers run
on this machine and share its cores, so the ratio measures the cost of
splitting (two services, merging the partial aggregates), not a speed-up;
on several machines the clients' work would run in parallel. Prints numbers
from this one run; not a test.
"""

import dataclasses

from absl import app
from absl import flags

from benchmarks import measure
from experiments import config as config_lib
from tasks import registry
from tff_flame import tff_worker

_CLIENTS = flags.DEFINE_list('clients', ['20', '100'], 'Clients per round to time.')
_REPEATS = flags.DEFINE_integer('repeats', 3, 'Timed rounds (median reported).', lower_bound=1)


def time_round(task, config, num_services, repeats) -> float:
  """Median seconds of one round with the clients split over `num_services` workers."""
  with tff_worker.local_worker(num_local=num_services):
    return measure.median_seconds(measure.first_round(task, config), repeats)


def main(argv):
  del argv
  sizes = [int(c) for c in _CLIENTS.value]
  task = registry.load_task(config_lib.TaskConfig(task='digits', num_clients=max(sizes)), seed=0)
  base = config_lib.ExperimentConfig(defense='flame', attack='constrain_and_scale',
                                     client_epochs=1)
  print('Both services share this machine\'s cores: the ratio is overhead, not speed-up.')
  print(f"{'clients':>8} {'1 service s':>12} {'2 services s':>13} {'2 / 1':>7}")
  for n in sizes:
    config = dataclasses.replace(base, clients_per_round=n)
    one = time_round(task, config, 1, _REPEATS.value)
    two = time_round(task, config, 2, _REPEATS.value)
    print(f'{n:>8} {one:>12.2f} {two:>13.2f} {two / one:>7.2f}', flush=True)


if __name__ == '__main__':
  app.run(main)
