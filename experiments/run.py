"""Trains FedAvg with a defense on a backdoor task and records MA/BA per round.

  python -m experiments.run --rounds=10 --defense=flame --attack=data_poisoning

Offline default: scikit-learn's handwritten digits split non-IID across
clients. Each round is logged and appended to <output_dir>/rounds.jsonl; the
end writes summary.json and metrics.png. Flags: `experiments/config.py`.
"""

import logging
import sys

from absl import app

from experiments import config as config_lib
from experiments import loop
from experiments import pretrain
from experiments import tff_worker

config_lib.define_flags()


def main(argv):
  if len(argv) > 1:
    print(f'error: unexpected arguments {argv[1:]}', file=sys.stderr)
    return 2
  logging.getLogger().setLevel(logging.INFO)
  task_config = config_lib.from_flags(config_lib.TaskConfig)
  config = config_lib.from_flags(config_lib.ExperimentConfig)
  output_config = config_lib.from_flags(config_lib.OutputConfig)
  output_dir = output_config.output_dir
  try:
    task_config.validate()
    task = loop.load_task(task_config, seed=config.seed)
    config.validate(len(task.client_data))
  except (ValueError, OSError) as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  with tff_worker.local_worker():
    pretrained = pretrain.load_or_train(task, task_config, config,
                                        output_config.pretrain_cache_dir, log=print)
    summary = loop.run_experiment(task, config, output_dir, log=print, pretrained=pretrained)
  final = summary['final']
  print(f"final: MA {final['main_accuracy']:.3f} BA {final['backdoor_accuracy']:.3f} "
        f'-> {output_dir}/rounds.jsonl, summary.json, metrics.png')
  return 0


if __name__ == '__main__':
  app.run(main)
