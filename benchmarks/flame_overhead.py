"""FLAME's cost next to a plain mean, and TF clustering next to the `hdbscan` package.

  python -m benchmarks.flame_overhead [--clients=10,30,50,100,200] [--repeats=2]
      [--output_json=PATH] [--dim=D] [--hardened] [--num_groups=G --stacks_per_group=K]
      [--local_services=k] [--only=flame,flame_model] [--generate_in_worker]
      [--perf_dir=DIR]

For each n, three variants run, each in a FRESH TFF worker of its own
(`tff_flame.tff_worker.local_worker()`): a plain mean
(`tff.aggregators.UnweightedMeanFactory`), FLAME in update space and FLAME in
model space (`create_gathered`, the global model at the server), both with
`max_clients=n` (so (G, K) = `gather_layout(n)`: G aggregates of K row stacks);
with `--hardened` also the hardened FLAME (`HardenedFlameFactory`, model space). Per variant:

  first_s:  the first `next` call (loads the computation into the worker);
  next_s:   the median of `--repeats` further calls (steady state);
  peak_mb:  the worker's peak resident memory (VmHWM) right after the FIRST
            call in the fresh worker. Later calls in a long-lived worker creep
            up (glibc keeps freed memory; `MALLOC_MMAP_THRESHOLD_=1048576`
            reduces it), so this is the regime reported.

Updates have the shape of the EMNIST CNN's trainable weights (1.66 M floats);
a third of the clients push an opposite direction. They are sent from Python
to the worker, or with `--generate_in_worker` made inside it from each
client's seed (the only way past the 2 GB a call may send, e.g. n = 500 at
d = 1.66 M); the time and memory of making them are then in every variant.
Machines here are noisy: only ratios from the same run are meaningful. `--output_json` writes a list
of objects, one per n, with keys n, flame_next_s, mean_next_s, flame_peak_mb,
mean_peak_mb, flame_model_next_s, flame_model_peak_mb, the first-call times
and the ratios to mean (and num_stacks, K; flame_hardened_* with `--hardened`).
"""

import collections
import contextlib
import json
import os
import re
import signal
import subprocess
import time

from absl import app
from absl import flags
import numpy as np
import tensorflow as tf
import tensorflow_federated as tff

import hdbscan

from benchmarks import measure
from tff_flame import tff_worker
from tff_flame import clustering
from tff_flame import flame
from tff_flame import hardened
from tff_flame import stacked_ops

_CLIENTS = flags.DEFINE_list('clients', ['10', '30', '50', '100'], 'Clients per round to time.')
_CLUSTER_SIZES = flags.DEFINE_list('cluster_sizes', ['10', '50', '100', '200', '500'],
                                   'n for the clustering-only comparison (empty: skip).')
_REPEATS = flags.DEFINE_integer('repeats', 2, 'Timed calls after the first (median reported).',
                                lower_bound=1)
_NUM_GROUPS = flags.DEFINE_integer('num_groups', None,
                                   "FLAME's gather aggregates G (default: gather_layout(n)).")
_STACKS = flags.DEFINE_integer('stacks_per_group', None,
                               "FLAME's row stacks K per aggregate (default: gather_layout(n)).")
_HARDENED = flags.DEFINE_bool('hardened', False,
                              'Also time the hardened FLAME (model space) at every n.')
_SERVICES = flags.DEFINE_integer('local_services', 1, 'Split each round over this many local '
                                 'TFF workers (the mergeable context; each folds its share of '
                                 'the clients); peak_mb is then the largest worker\'s.',
                                 lower_bound=1)
_ONLY = flags.DEFINE_list('only', [], 'Time only these of flame, flame_model (mean always runs; '
                          'the table then shows nan for the others), e.g. to compare layouts.')
_DIM = flags.DEFINE_integer('dim', None, 'Time updates of this many floats (one tensor) instead '
                            "of the EMNIST CNN's 1.66 M (e.g. a smaller model at n = 500).",
                            lower_bound=1)
_GENERATE = flags.DEFINE_bool('generate_in_worker', False, "Make each client's update inside "
                               'the worker from its seed instead of sending it (n x d floats '
                               'over 2 GB cannot be sent).')
_PERF_DIR = flags.DEFINE_string('perf_dir', None, 'Profile the timed calls of every variant '
                                'with Linux perf (the worker\'s and this process\'s CPU '
                                'samples by category; see `perf_profile`) into DIR.')
_OUTPUT_JSON = flags.DEFINE_string('output_json', None,
                                   'Also write the per-n numbers to this JSON file.')

VARIANTS = ('mean', 'flame', 'flame_model')
PERF_HZ = 499


def emnist_cnn_value_type():
  from tasks import images  # pylint: disable=g-import-not-at-top
  model = images.create_emnist_cnn()
  leaves = [tff.TensorType(np.float32, w.shape) for w in model.trainable_weights]
  return tff.StructWithPythonType(leaves, list), int(model.count_params())


def package_labels(distances: np.ndarray, min_cluster_size: int) -> np.ndarray:
  """The `hdbscan` package's labels, FLAME's settings."""
  return hdbscan.HDBSCAN(metric='precomputed', min_cluster_size=min_cluster_size, min_samples=1,
                         allow_single_cluster=True).fit(distances).labels_


def client_values(value_type, n, rng):
  shapes = [leaf.shape for leaf in value_type]
  size = sum(int(np.prod(s)) for s in shapes)
  direction = rng.standard_normal(size, dtype=np.float32)
  values = []
  for i in range(n):
    sign = -1.0 if i < n // 3 else 1.0
    flat = sign * direction + 0.5 * rng.standard_normal(size, dtype=np.float32)
    parts = np.split(flat, np.cumsum([int(np.prod(s)) for s in shapes])[:-1])
    values.append([p.reshape(s) for p, s in zip(parts, shapes)])
  return values


def update_maker(value_type, n):
  """A TF computation making client i's update from its seed [i, 0] inside the worker: the
  same mix as `client_values` (a shared direction, opposite for the first third, plus
  noise), drawn with TF's stateless generator."""
  shapes = [leaf.shape for leaf in value_type]
  sizes = [int(np.prod(s)) for s in shapes]

  @tff.tensorflow.computation(tff.TensorType(np.int32, [2]))
  def make_update(seed):
    direction = tf.random.stateless_normal([sum(sizes)], seed=[0, 1])
    sign = tf.where(seed[0] < n // 3, -1.0, 1.0)
    flat = sign * direction + 0.5 * tf.random.stateless_normal([sum(sizes)], seed=seed + 2)
    return [tf.reshape(p, s) for p, s in zip(tf.split(flat, sizes), shapes)]

  return make_update


def generating_next(process, value_type, n, with_global_model: bool):
  """`next(state[, global_model], seeds@CLIENTS)`: the process's `next` on updates made in the
  worker. The CLIENTS argument comes last, as TFF 0.87's mergeable context needs."""
  make_update = update_maker(value_type, n)
  state_type = process.initialize.type_signature.result
  seeds_type = tff.FederatedType(tff.TensorType(np.int32, [2]), tff.CLIENTS)
  if with_global_model:
    model_type = process.next.type_signature.parameter[2]

    @tff.federated_computation(state_type, model_type, seeds_type)
    def next_with_model(state, global_model, seeds):
      return process.next(state, tff.federated_map(make_update, seeds), global_model)
    return next_with_model

  @tff.federated_computation(state_type, seeds_type)
  def next_fn(state, seeds):
    return process.next(state, tff.federated_map(make_update, seeds))
  return next_fn


def client_seeds(n) -> list:
  return [np.array([i, 0], np.int32) for i in range(n)]


def build_next(variant, value_type, n, global_model):
  """A callable running one `next` of the variant (state fixed) on the clients' values (their
  seeds with `--generate_in_worker`)."""
  if variant == 'mean':
    process = tff.aggregators.UnweightedMeanFactory().create(value_type)
    with_model = False
  else:
    factory_class = (hardened.HardenedFlameFactory if variant == 'flame_hardened'
                     else flame.FlameFactory)
    factory = factory_class(max_clients=n, num_groups=_NUM_GROUPS.value,
                            stacks_per_group=_STACKS.value,
                            clustering_space='update' if variant == 'flame' else 'model')
    process = factory.create_gathered(value_type)
    with_model = factory.requires_global_model
  state = process.initialize()
  if _GENERATE.value:
    next_fn = generating_next(process, value_type, n, with_model)
    if with_model:
      return lambda seeds: next_fn(state, global_model, seeds)
    return lambda seeds: next_fn(state, seeds)
  if with_model:
    return lambda values: process.next(state, values, global_model)
  return lambda values: process.next(state, values)


# Where a worker's CPU time goes, from perf's self time per symbol: (category, library regex,
# symbol regex); the first match wins.
PERF_CATEGORIES = (
    ('copies (memmove)', r'libc', r'mem(move|cpy)'),
    ('malloc / free', r'libc', r'malloc|free|_int_|tcache|arena'),
    ('kernel: new pages, faults', r'kernel', r'page|fault|folio|alloc|vma|pte|lru|zap|mm_|'
     r'rmqueue|memcg|clear_|unmap|munmap|madvise'),
    ('kernel: other', r'kernel', r'.'),
    ('serialization (protobuf, gRPC)', r'.', r'protobuf|Serializ|Parse|Proto|grpc|Cord'),
    ('noise (random normal)', r'.', r'Philox|Random|sincos|__log|ieee754'),
    ('casts to float64', r'.', r'TensorConversionOp<double'),
    ('JIT code (oneDNN kernels)', r'^perf-\d+\.map$', r'.'),
    ('matrix products (Gram)', r'.', r'gemm|gebp|gemv|matrix_vector|general_matrix|Contraction'),
    ('other TF kernels (Eigen)', r'.', r'Eigen'),
    ('other', r'.', r'.'),
)
PERF_SAMPLE = re.compile(r'^\s*(\d+)\s+[0-9a-f]+\s+(.*) \((.*)\)\s*$')


def category_of(library: str, symbol: str) -> str:
  return next(name for name, library_re, symbol_re in PERF_CATEGORIES
              if re.search(library_re, library) and re.search(symbol_re, symbol))


def perf_samples(script: str, sides: dict) -> dict:
  """{side: {category: samples}} and {side: Counter of (library, symbol)} from `perf script
  -F pid,ip,sym,dso` text; `sides` maps a side's name to its set of pids."""
  side_of = {pid: side for side, pids in sides.items() for pid in pids}
  counts = {side: collections.Counter() for side in sides}
  symbols = {side: collections.Counter() for side in sides}
  for line in script.splitlines():
    match = PERF_SAMPLE.match(line)
    if match and int(match[1]) in side_of:
      side, library = side_of[int(match[1])], os.path.basename(match[3])
      counts[side][category_of(library, match[2])] += 1
      symbols[side][(library, match[2][:100])] += 1
  return counts, symbols


@contextlib.contextmanager
def perf_profile(label: str):
  """With `--perf_dir`, Linux perf samples this process and its TFF workers (CPU clock,
  `PERF_HZ`) while the block runs. Per side (`worker`; `caller`, this Python process, which
  sends the values and receives the result) DIR/<label>.json holds the samples per
  `PERF_CATEGORIES` entry and DIR/<label>.txt the 40 symbols with the most samples; the
  yielded dict gets the same counts as 'counts'."""
  profile = {}  # 'counts' after the block: {side: {category: samples}}
  if not _PERF_DIR.value:
    yield profile
    return
  os.makedirs(_PERF_DIR.value, exist_ok=True)
  data = os.path.join(_PERF_DIR.value, f'{label}.perf.data')
  sides = dict(worker=set(tff_worker.tff_worker_pids()), caller={os.getpid()})
  recorder = subprocess.Popen(['perf', 'record', '-e', 'cpu-clock', '-F', str(PERF_HZ), '-p',
                               ','.join(str(p) for pids in sides.values() for p in pids),
                               '-o', data],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  time.sleep(2)  # perf attaches to the processes' threads
  try:
    yield profile
  finally:
    recorder.send_signal(signal.SIGINT)
    recorder.wait()
  script = subprocess.run(['perf', 'script', '-i', data, '-F', 'pid,ip,sym,dso'],
                          capture_output=True, text=True, check=False).stdout
  counts, symbols = perf_samples(script, sides)
  profile['counts'] = counts
  with open(os.path.join(_PERF_DIR.value, f'{label}.json'), 'w') as f:
    json.dump(counts, f, indent=2)
  with open(os.path.join(_PERF_DIR.value, f'{label}.txt'), 'w') as f:
    for side, counter in symbols.items():
      f.write(f'# {side}: samples per (library, symbol), {PERF_HZ} Hz\n')
      f.writelines(f'{c:>7} {lib:<28} {sym}\n' for (lib, sym), c in counter.most_common(40))


def print_perf(row: dict, profiles: dict) -> None:
  """Adds `<variant>_perf_cpu_s` (CPU seconds per timed call, by side and category) to `row`
  for each variant in `profiles` ({variant: perf_profile's counts}) and prints them side by
  side."""
  variants = list(profiles)
  for v, counts in profiles.items():
    per_call = 1 / PERF_HZ / _REPEATS.value
    row[f'{v}_perf_cpu_s'] = {
        side: dict({k: c * per_call for k, c in by_category.items()},
                   total=sum(by_category.values()) * per_call)
        for side, by_category in counts.items()}
  print('      CPU s per call (perf): ' + ' / '.join(variants))
  for side in ('worker', 'caller'):
    for category in [name for name, _, _ in PERF_CATEGORIES] + ['total']:
      cells = [row[f'{v}_perf_cpu_s'][side].get(category, 0.0) for v in variants]
      if any(cells):
        print(f'      {side:<7}{category:<32} ' + ' '.join(f'{c:>7.2f}' for c in cells),
              flush=True)


def run_variant(variant, value_type, values, global_model, repeats):
  """(first-call s, median next s, worker peak MB after the first call, perf's counts of the
  timed calls or None), in a fresh worker."""
  with tff_worker.local_worker(num_local=_SERVICES.value):
    run = build_next(variant, value_type, len(values), global_model)
    first_s = measure.seconds(lambda: run(values))
    peak_mb = measure.worker_peak_mb()
    with perf_profile(f'{variant}_n{len(values)}') as profile:
      next_s = measure.median_seconds(lambda: run(values), repeats, warm_up=False)
    return first_s, next_s, peak_mb, profile.get('counts')


def main(argv):
  del argv
  rng = np.random.default_rng(0)
  rows = []
  if _DIM.value:
    value_type = tff.StructWithPythonType([tff.TensorType(np.float32, [_DIM.value])], list)
    num_params, what = _DIM.value, 'one float32 tensor'
  else:
    (value_type, num_params), what = emnist_cnn_value_type(), 'EMNIST CNN trainable weights'
  print(f'update size: {num_params} floats ({what}); peak = worker '
        'VmHWM after the first call in a fresh worker; next = median of later calls')
  print(f"{'n':>5} {'G':>3} {'K':>4} {'mean s':>8} {'FLAME s':>8} {'ratio':>6} {'model s':>8} {'ratio':>6}"
        f" {'mean MB':>8} {'FLAME MB':>9} {'ratio':>6} {'model MB':>9} {'ratio':>6}")
  for n in [int(c) for c in _CLIENTS.value]:
    values = client_seeds(n) if _GENERATE.value else client_values(value_type, n, rng)
    global_model = client_values(value_type, 1, rng)[0]
    variants = VARIANTS + (('flame_hardened',) if _HARDENED.value else ())
    skipped = (float('nan'),) * 3 + (None,)
    out = {v: (run_variant(v, value_type, values, global_model, _REPEATS.value)
               if v == 'mean' or not _ONLY.value or v in _ONLY.value else skipped)
           for v in variants}
    del values
    factory = flame.FlameFactory(max_clients=n, num_groups=_NUM_GROUPS.value,
                                 stacks_per_group=_STACKS.value)
    row = dict(n=n, num_groups=factory.num_groups, num_stacks=factory.stacks_per_group,
               dim=num_params, local_services=_SERVICES.value,
               generate_in_worker=_GENERATE.value)
    profiles = {}
    for v in variants:
      row[f'{v}_first_s'], row[f'{v}_next_s'], row[f'{v}_peak_mb'], counts = out[v]
      if counts is not None:
        profiles[v] = counts
    for v in variants[1:]:
      row[f'{v}_next_ratio'] = row[f'{v}_next_s'] / row['mean_next_s']
      row[f'{v}_peak_ratio'] = row[f'{v}_peak_mb'] / row['mean_peak_mb']
    rows.append(row)
    print(f"{n:>5} {row['num_groups']:>3} {row['num_stacks']:>4} {row['mean_next_s']:>8.2f} {row['flame_next_s']:>8.2f} "
          f"{row['flame_next_ratio']:>6.2f} {row['flame_model_next_s']:>8.2f} "
          f"{row['flame_model_next_ratio']:>6.2f} {row['mean_peak_mb']:>8.0f} "
          f"{row['flame_peak_mb']:>9.0f} {row['flame_peak_ratio']:>6.2f} "
          f"{row['flame_model_peak_mb']:>9.0f} {row['flame_model_peak_ratio']:>6.2f}", flush=True)
    if _HARDENED.value:
      print(f"      hardened (model space): {row['flame_hardened_next_s']:.2f} s "
            f"({row['flame_hardened_next_ratio']:.2f}x mean, "
            f"{row['flame_hardened_next_s'] / row['flame_model_next_s']:.2f}x FLAME model), "
            f"{row['flame_hardened_peak_mb']:.0f} MB ({row['flame_hardened_peak_ratio']:.2f}x)",
            flush=True)
    if profiles:
      print_perf(row, profiles)
    if _OUTPUT_JSON.value:  # after every n, so a later failure keeps what was measured
      with open(_OUTPUT_JSON.value, 'w') as f:
        json.dump(rows, f, indent=2)

  sizes = [int(c) for c in _CLUSTER_SIZES.value if c]
  if not sizes:
    return
  labels_tf = tf.function(clustering.hdbscan_labels, input_signature=[
      tf.TensorSpec([None, None], tf.float64), tf.TensorSpec([], tf.int32),
      tf.TensorSpec([], tf.int32)])
  print(f"\n{'n':>5} {'TF clustering s':>16} {'hdbscan pkg s':>14} {'TF/pkg':>8} "
        f"{'same labels':>12}")
  for n in sizes:
    x = rng.normal(size=(n, 64)) + np.where(np.arange(n)[:, None] < n // 3, -2.0, 2.0)
    d = stacked_ops.cosine_distances_from_gram(tf.constant(x @ x.T)).numpy()
    mcs = n // 2 + 1
    tf_s = measure.median_seconds(lambda: labels_tf(d, mcs, 1).numpy(), _REPEATS.value)
    pkg_s = measure.median_seconds(lambda: package_labels(d, mcs), _REPEATS.value)
    same = np.array_equal(labels_tf(d, mcs, 1).numpy() >= 0, package_labels(d, mcs) >= 0)
    print(f'{n:>5} {tf_s:>16.4f} {pkg_s:>14.4f} {tf_s / pkg_s:>8.1f} {str(same):>12}')


if __name__ == '__main__':
  app.run(main)
