"""Did a Shakespeare run learn the trigger phrase, or only where the phrase is written?

  python -m benchmarks.text_backdoor_control --run_dir=results/evaluation/shakespeare/...

The text backdoor writes trigger + continuation at random word starts, and BA
is measured on test sequences with the phrase placed the same way (with a
fixed seed). A model could still reach a high BA by predicting the
continuation after anything shaped like the trigger. This loads the run's last
checkpoint and measures the continuation's accuracy after the real trigger
(BA) and after control phrases of the same length, at the same places: a
backdoor tied to the trigger scores high on the first and low on the others.
"""

import asyncio
import json
import os

from absl import app
from absl import flags
import tensorflow_federated as tff

from experiments import config as config_lib
from experiments import loop
from tasks import registry
from tff_flame import tff_worker
from tasks import shakespeare
from tasks import task as task_lib

_RUN_DIR = flags.DEFINE_string('run_dir', None, 'Output folder of a finished Shakespeare run.',
                               required=True)
_CONTROLS = flags.DEFINE_multi_string(
    'control', ['the duke is ', 'the lord is ', 'and then we ', 'my good lord'],
    'A control phrase, as long as the trigger; repeat the flag for several (spaces are kept).')


def continuation_accuracy(model, x_test, y_test, phrase: str, continuation: str) -> tuple:
  """(BA's whole-continuation accuracy, per-character accuracy) after `phrase`, placed as BA's trigger."""
  x, y = shakespeare.backdoor_test_set(x_test, y_test, phrase, continuation,
                                       x_test.shape[1])
  logits = task_lib.predict_logits(model, x)
  return (task_lib.whole_target_accuracy_from_logits(logits, y),
          task_lib.accuracy_from_logits(logits, y))


def main(argv):
  del argv
  with open(os.path.join(_RUN_DIR.value, loop.RUN_CONFIG)) as f:
    identity = json.load(f)
  task_config = config_lib.TaskConfig(**identity['task_config'])
  config = config_lib.ExperimentConfig(**identity['experiment'])
  task = registry.load_task(task_config, seed=config.seed)
  trigger, continuation = task.info['trigger'], task.info['continuation']
  for control in _CONTROLS.value:
    if len(control) != len(trigger):
      raise app.UsageError(f'--control={control!r} has {len(control)} characters; it must be as '
                           f'long as the trigger {trigger!r} ({len(trigger)}) to land at the '
                           'same places.')
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
    whole, per_character = continuation_accuracy(model, x_test, y_test, phrase, continuation)
    print(f'  {label:8s} {phrase!r}: whole {whole:.3f}, per character {per_character:.3f}')


if __name__ == '__main__':
  app.run(main)
