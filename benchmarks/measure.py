"""Timing and memory helpers shared by the benchmark scripts."""

import statistics
import time

from experiments import tff_worker


def median_seconds(fn, repeats) -> float:
  """Median wall time of `repeats` calls after one warm-up call."""
  fn()  # Warm-up: builds and loads the computation.
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def worker_peak_mb() -> float:
  """Peak resident memory of this process's TFF worker (VmHWM), in MB."""
  pids = tff_worker.tff_worker_pids()
  if not pids:
    return float('nan')
  with open(f'/proc/{pids[0]}/status') as f:
    for line in f:
      if line.startswith('VmHWM'):
        return int(line.split()[1]) / 1024
  return float('nan')


def available_mb() -> float:
  with open('/proc/meminfo') as f:
    for line in f:
      if line.startswith('MemAvailable'):
        return int(line.split()[1]) / 1024
  return float('inf')


def gather_estimate_mb(n: int, size: int) -> float:
  """TFF's runtime keeps every intermediate of a federated_aggregate: the
  growing [k, d] stacks of a gather cost about n^2 / 2 * d floats, plus copies
  (measured here: 0.8 GB at n=10, 2.1 GB at n=20 for d = 1.66 M, i.e. about
  1.4 * n^2 / 2 * d * 4 bytes above a 0.4 GB base)."""
  return 400 + 1.4 * n * n / 2 * size * 4 / 2**20
