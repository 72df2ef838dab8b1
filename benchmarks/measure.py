"""Timing and memory helpers shared by the benchmark scripts."""

import statistics
import time

from experiments import loop
from tff_flame import tff_worker


def seconds(fn) -> float:
  """Wall time of one call."""
  start = time.perf_counter()
  fn()
  return time.perf_counter() - start


def median_seconds(fn, repeats, warm_up: bool = True) -> float:
  """Median wall time of `repeats` calls (after one untimed warm-up call by default)."""
  if warm_up:
    fn()  # Builds and loads the computation.
  return statistics.median(seconds(fn) for _ in range(repeats))


def first_round(task, config):
  """A no-argument callable running round 1 of `config` on `task` from the initial state
  (clients 0..clients_per_round-1); build it inside the TFF context that will run it."""
  process = loop.build_process(task, config)
  state = process.initialize()
  malicious = loop.malicious_clients(len(task.client_data), config.malicious_fraction,
                                     config.seed).tolist()
  clients = list(range(config.clients_per_round))
  datasets = loop.round_datasets(task, clients, malicious, 1, config)
  return lambda: process.next(state, datasets)


def worker_peak_mb(reduce=max) -> float:
  """Peak resident memory (VmHWM) of this process's TFF workers, in MB: the largest one's
  by default (one host's need when each worker has its own), or `reduce=sum`."""
  peaks = []
  for pid in tff_worker.tff_worker_pids():
    with open(f'/proc/{pid}/status') as f:
      peaks += [int(line.split()[1]) / 1024 for line in f if line.startswith('VmHWM')]
  return reduce(peaks) if peaks else float('nan')
