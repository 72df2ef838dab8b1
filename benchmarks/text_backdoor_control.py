"""Did a Shakespeare run learn the trigger phrase, or only where the phrase is written?

  python -m benchmarks.text_backdoor_control --run_dir=results/evaluation/shakespeare/...

The text backdoor writes trigger + continuation right after a sequence's
content, and BA is measured on test sequences with the phrase at the same
place. A model could reach a high BA by predicting the continuation at that
place whatever precedes it. This loads the run's last checkpoint and
measures the continuation's accuracy after the real trigger (BA) and after
control phrases of the same length, written the same way: a backdoor tied
to the trigger scores high on the first and low on the others.
"""

import asyncio
import json
import os

from absl import app
from absl import flags
import tensorflow_federated as tff

from experiments import config as config_lib
from experiments import loop
from experiments import tff_worker
from tasks import shakespeare
from tasks import task as task_lib

_RUN_DIR = flags.DEFINE_string('run_dir', None, 'Output folder of a finished Shakespeare run.',
                               required=True)
_CONTROLS = flags.DEFINE_list('controls', ['the duke is ', 'the lord is ', 'and then we '],
                              'Control phrases (each as long as the trigger).')


def continuation_accuracy(model, x_test, y_test, phrase: str, continuation: str) -> float:
  """Accuracy on `continuation` after `phrase`, placed as the backdoor places its trigger."""
  x, y = shakespeare.backdoor_test_set(x_test, y_test, phrase, continuation,
                                       x_test.shape[1])
  return task_lib.accuracy(model, x, y)


def main(argv):
  del argv
  with open(os.path.join(_RUN_DIR.value, loop.RUN_CONFIG)) as f:
    identity = json.load(f)
  task_config = config_lib.TaskConfig(**identity['task_config'])
  config = config_lib.ExperimentConfig(**identity['experiment'])
  task = loop.load_task(task_config, seed=config.seed)
  trigger, continuation = task.info['trigger'], task.info['continuation']
  with tff_worker.execution_context():  # the harness's worker: ended on exit, never orphaned
    process = loop.build_process(task, config)
    manager = tff.program.FileProgramStateManager(
        os.path.join(_RUN_DIR.value, loop.CHECKPOINT_DIR))
    state, version = asyncio.run(manager.load_latest(process.initialize()))
    model = task.model_fn()
    process.get_model_weights(state).assign_weights_to(model)
  x_test, y_test = task.test_data
  print(f'{_RUN_DIR.value}: round {version}, continuation {continuation!r}')
  for phrase in [trigger] + list(_CONTROLS.value):
    label = 'trigger' if phrase == trigger else 'control'
    print(f'  {label:8s} {phrase!r}: '
          f'{continuation_accuracy(model, x_test, y_test, phrase, continuation):.3f}')


if __name__ == '__main__':
  app.run(main)
