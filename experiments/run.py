"""Trains FedAvg with a defense on a backdoor task and records MA/BA per round.

  python -m experiments.run --rounds=10 --defense=flame --attack=data_poisoning

Offline default: scikit-learn's handwritten digits split non-IID across
clients. One line per round on the console; every round goes to
<output_dir>/rounds.jsonl, metrics.csv and tensorboard/, and the process
state to <output_dir>/checkpoints, so running the same command again after
an interruption continues after the last finished round (`--fresh` starts
over). The end writes summary.json and metrics.png. Flags:
`experiments/config.py`.

TF's C++ log is off unless `--verbosity` (or `-v`) is given or
TF_CPP_MIN_LOG_LEVEL is set. SIGINT, SIGTERM and SIGKILL leave no TFF
worker behind (see `tff_flame/tff_worker.py`).
"""

import contextlib
import os
import signal
import sys
from typing import Iterator, Optional

if 'TF_CPP_MIN_LOG_LEVEL' not in os.environ and not any(
    a.startswith(('--verbosity', '-v')) for a in sys.argv[1:]):
  # Before TF is imported: it reads this once, and the workers inherit it.
  os.environ['TF_CPP_MIN_LOG_LEVEL'] = '3'

# pylint: disable=g-import-not-at-top,wrong-import-position
from absl import app
from absl import flags
from absl import logging

from experiments import config as config_lib
from experiments import loop
from experiments import pretrain
from tasks import registry
from tff_flame import tff_worker

config_lib.define_flags()


def parse_addresses(text: Optional[str]) -> list:
  """'host:port,host:port' -> ['host:port', ...]; ValueError names --tff_workers."""
  addresses = [a.strip() for a in (text or '').split(',') if a.strip()]
  for address in addresses:
    host, _, port = address.rpartition(':')
    if not host or not port.isdigit():
      raise ValueError(f'--tff_workers must be HOST:PORT[,HOST:PORT...], got {address!r}.')
  return addresses


@contextlib.contextmanager
def terminate_on_sigterm() -> Iterator[None]:
  """Turns SIGTERM into SystemExit in the body, so `finally` blocks (and the
  worker clean-up of `tff_worker.execution_context`) run; the previous handler
  is restored after."""
  def handler(signum, frame):
    del frame
    raise SystemExit(128 + signum)
  previous = signal.signal(signal.SIGTERM, handler)
  try:
    yield
  finally:
    signal.signal(signal.SIGTERM, previous)


def main(argv):
  if len(argv) > 1:
    print(f'error: unexpected arguments {argv[1:]}', file=sys.stderr)
    return 2
  verbose = flags.FLAGS['verbosity'].present
  if not verbose:
    logging.set_verbosity(logging.WARNING)
  task_config = config_lib.from_flags(config_lib.TaskConfig)
  config = config_lib.from_flags(config_lib.ExperimentConfig)
  output = config_lib.from_flags(config_lib.OutputConfig)
  runtime = config_lib.from_flags(config_lib.RuntimeConfig)
  try:
    task_config.validate()
    addresses = parse_addresses(runtime.tff_workers)
    task = registry.load_task(task_config, seed=config.seed)
    config.validate(len(task.client_data))
  except (ValueError, OSError) as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  with terminate_on_sigterm(), \
      tff_worker.execution_context(addresses, quiet=not verbose):
    try:
      pretrained = pretrain.load_or_train(task, task_config, config, output.pretrain_cache_dir,
                                          log=lambda line: print(line, flush=True))
      summary = loop.run_experiment(task, config, output.output_dir,
                                    log=lambda line: print(line, flush=True),
                                    task_config=task_config, fresh=output.fresh,
                                    pretrained=pretrained)
    except loop.OutputDirError as e:
      print(f'error: {e}', file=sys.stderr)
      return 2
  final = summary['final']
  print(f"final: MA {final['main_accuracy']:.3f} BA {final['backdoor_accuracy']:.3f} "
        f'-> {output.output_dir}/rounds.jsonl, metrics.csv, tensorboard/, summary.json, '
        'metrics.png')
  return 0


if __name__ == '__main__':
  app.run(main)
