"""Every hyperparameter of an experiment, once: dataclass fields that become the flags.

`TaskConfig` (which data), `ExperimentConfig` (training, attack, defense) and
`OutputConfig` (where results go) are the single source of truth. The training
binary and the grid define their absl flags from these fields
(`define_flags`), read them back (`from_flags`), and the flag table in
docs/experiments.md is `flag_table_markdown()` (a test keeps them equal). All range checks live
in `validate`, with messages naming the flag.
"""

import dataclasses
import typing
from typing import Any, Optional, Sequence

from experiments import attacks
from experiments import defenses
from tasks import registry

TASKS = registry.TASKS
DEFENSES = defenses.DEFENSES
ATTACKS = attacks.ATTACKS
CLUSTERING_SPACES = ('update', 'model')
FLAME_DISTANCES = ('cosine', 'euclidean')


def param(default: Any, help: str, *, choices: Sequence[str] = (),  # pylint: disable=redefined-builtin
          lower: Optional[float] = None, upper: Optional[float] = None,
          upper_exclusive: bool = False, default_text: Optional[str] = None):
  """A config field with its flag help, allowed values and the flag table's default text."""
  return dataclasses.field(default=default, metadata=dict(
      help=help, choices=tuple(choices), lower=lower, upper=upper,
      upper_exclusive=upper_exclusive, default_text=default_text))


@dataclasses.dataclass
class TaskConfig:
  """Which task and data; `tasks.registry.load_task` reads it."""
  task: str = param('digits', ', '.join(f'`{t}`' for t in TASKS), choices=TASKS)
  num_clients: int = param(20, 'clients in the population (the most roles / writers for text '
                           'and EMNIST)', lower=1)
  dirichlet_alpha: float = param(0.5, 'digits, fashion_mnist: non-IID label skew (smaller is '
                                 'more skewed)', lower=1e-3)
  emnist_cache_dir: Optional[str] = param(None, "emnist: TFF's cache folder")
  fashion_mnist_dir: str = param('/usr/share/datasets/fashion-mnist', 'fashion_mnist: folder '
                                 'of the IDX files (`apt-get install dataset-fashion-mnist`)')
  fashion_mnist_train_examples: Optional[int] = param(
      None, 'fashion_mnist: training images spread over the clients (a seeded random subset)',
      lower=1, default_text='all 60,000')
  fashion_mnist_test_examples: Optional[int] = param(
      None, 'fashion_mnist: test images MA and BA are measured on (the same random subset for '
      'every seed; evaluation costs time every round)', lower=1, default_text='all 10,000')
  shakespeare_text: Optional[str] = param(None, "shakespeare: a play text in 'SPEAKER:' + "
                                          'lines format')
  shakespeare_cache_dir: Optional[str] = param(None, "shakespeare: TFF's cache folder (without "
                                               '`--shakespeare_text`)')
  nbaiot_path: Optional[str] = param(None, 'nbaiot: per-device N-BaIoT folder or a folder of '
                                     'CSVs')
  nbaiot_clients_per_device: int = param(5, 'nbaiot: clients each device is split into',
                                         lower=1)

  def validate(self) -> None:
    """Raises ValueError naming the flag that is out of range."""
    check_fields(self)


@dataclasses.dataclass
class ExperimentConfig:
  """What a run does: training, attack and defense."""
  defense: str = param('flame', ', '.join(f'`{d}`' for d in DEFENSES) + ' (docs/experiments.md)',
                       choices=DEFENSES)
  attack: str = param('constrain_and_scale', ', '.join(f'`{a}`' for a in ATTACKS) +
                      ' (docs/experiments.md)', choices=ATTACKS)
  rounds: int = param(15, 'training rounds', lower=1)
  clients_per_round: int = param(10, 'clients sampled each round', lower=1)
  malicious_fraction: float = param(0.3, 'share of the population that is malicious',
                                    lower=0.0, upper=1.0)
  data_poisoning_rate: float = param(0.5, "share of a malicious client's examples that get "
                                     'the trigger', lower=0.0, upper=1.0)
  attack_start_round: int = param(8, 'first round in which malicious clients attack', lower=1)
  attack_rounds: Optional[int] = param(None, 'number of attack rounds from the start round',
                                       lower=0, default_text='all')
  alpha: float = param(0.9, 'constrain_and_scale: weight of the task loss', lower=0.0,
                       upper=1.0)
  scale_factor: Optional[float] = param(None, 'constrain_and_scale, pgd_scaled: gamma',
                                        lower=1e-9, default_text='model replacement')
  pgd_radius: float = param(1.0, 'pgd, pgd_scaled: L2 radius around the global model',
                            lower=1e-9)
  radius_fraction: float = param(0.7, 'stay_small, neurotoxin: PGD radius as a fraction of the '
                                 "norm of the attacker's own clean update (its estimate of "
                                 "FLAME's clipping bound S_t)", lower=1e-9)
  neurotoxin_keep: float = param(0.9, 'neurotoxin: share of coordinates (smallest benign '
                                 'gradient at G) the poisoned training may change', lower=1e-6,
                                 upper=1.0)
  a3fl_trigger_epochs: int = param(10, "a3fl: epochs of trigger optimisation over the attackers' "
                                   'pooled data before each attack round', lower=1)
  a3fl_adversarial_epochs: int = param(5, 'a3fl: epochs the copy of G that unlearns the trigger '
                                       'is trained', lower=1)
  a3fl_adversarial_weight: float = param(0.01, "a3fl: weight of the unlearning copy's loss in "
                                         "the trigger's objective", lower=0.0)
  a3fl_trigger_step: float = param(0.01, 'a3fl: signed-gradient step on the trigger values',
                                   lower=1e-9)
  ditl_max_lambda: float = param(2.0, 'defense_in_the_loop: the largest weight on the backdoor '
                                 'update it tries (above 1 it is boosted)', lower=1e-9)
  client_epochs: int = param(3, 'local epochs', lower=1)
  batch_size: int = param(20, 'client batch size', lower=1)
  client_learning_rate: float = param(0.1, 'client SGD learning rate', lower=0.0)
  server_learning_rate: float = param(1.0, 'server SGD learning rate', lower=0.0)
  noise_lambda: float = param(0.001, "FLAME's noise multiplier (the paper uses 0.01 for IoT)",
                              lower=0.0)
  clustering_space: str = param('model', 'FLAME, flame_hardened, freqfed and multi_metrics look '
                                'at local `model`s (the papers) or `update`s',
                                choices=CLUSTERING_SPACES)
  flame_distance: Optional[str] = param(
      None, "FLAME's clustering distance: `cosine` or `euclidean`", choices=FLAME_DISTANCES,
      default_text='cosine between models, Euclidean between updates')
  alike_threshold: float = param(2.0, 'flame_hardened: an alike pair is this many MADs above '
                                 "the median pair's update cosine similarity", lower=0.0)
  alike_group: int = param(3, 'flame_hardened: the smallest group of alike updates it rejects',
                           lower=2)
  multi_metrics_fraction: float = param(0.3, 'multi_metrics: share of the clients (lowest '
                                        'scores) averaged', lower=1e-6, upper=1.0)
  num_byzantine: Optional[int] = param(None, 'krum, multi_krum: f', lower=0,
                                       default_text='expected attackers per round')
  trim_fraction: float = param(0.2, 'trimmed_mean: share cut at each end per coordinate',
                               lower=0.0, upper=0.5, upper_exclusive=True)
  norm_bound: float = param(1.0, 'norm_bounding, weak_dp: L2 clip of each update', lower=1e-9)
  dp_noise_multiplier: float = param(0.01, 'weak_dp: noise stddev / norm_bound', lower=0.0)
  foolsgold_kappa: float = param(1.0, 'foolsgold: confidence of the logit (kappa)', lower=1e-9)
  pretrain_rounds: int = param(0, 'rounds of clean FedAvg (no attack, plain mean) run first and '
                               'cached; the run starts from that model', lower=0)
  seed: int = param(0, 'data split, client sampling, attackers and noise')

  def validate(self, num_clients: int) -> None:
    """Raises ValueError naming the flag that is out of range (given the task's size)."""
    check_fields(self)
    if self.clients_per_round > num_clients:
      raise ValueError(f'--clients_per_round must be in [1, num_clients={num_clients}], '
                       f'got {self.clients_per_round}.')

  def expected_attackers_per_round(self) -> int:
    return int(round(self.malicious_fraction * self.clients_per_round))

  def attacking(self, round_num: int) -> bool:
    """Whether malicious clients attack in this round (1-based)."""
    if self.attack == 'none' or round_num < self.attack_start_round:
      return False
    return self.attack_rounds is None or round_num < self.attack_start_round + self.attack_rounds


@dataclasses.dataclass
class OutputConfig:
  """Where a run writes its results."""
  output_dir: str = param('output/run', 'where `rounds.jsonl`, `metrics.csv`, `tensorboard/`, '
                          '`summary.json`, `metrics.png` and the checkpoints go; a run there '
                          'with the same configuration is continued')
  fresh: bool = param(False, 'start over in `--output_dir`, removing what a run wrote there')
  pretrain_cache_dir: str = param('output/pretrain', 'where `--pretrain_rounds` checkpoints are '
                                  'cached (shared by runs and grid cells)')


@dataclasses.dataclass
class RuntimeConfig:
  """Where TFF runs the computations (not part of a run's identity)."""
  tff_workers: Optional[str] = param(None, 'HOST:PORT,... of TFF executor services '
                                     '(`python -m experiments.worker`) to split each '
                                     "round's clients over", default_text='one local worker')


CONFIG_CLASSES = (TaskConfig, ExperimentConfig, OutputConfig, RuntimeConfig)


def check_fields(config) -> None:
  """Checks every field against its declared choices and bounds."""
  for field in dataclasses.fields(config):
    value, meta = getattr(config, field.name), field.metadata
    if value is None:
      continue
    if meta['choices'] and value not in meta['choices']:
      raise ValueError(f'--{field.name} must be one of {", ".join(meta["choices"])}; '
                       f'got {value!r}.')
    lower, upper = meta['lower'], meta['upper']
    too_high = upper is not None and (value >= upper if meta['upper_exclusive'] else
                                      value > upper)
    if (lower is not None and value < lower) or too_high:
      closing = ')' if meta['upper_exclusive'] else ']'
      raise ValueError(f'--{field.name} must be in [{lower}, '
                       f'{"inf" if upper is None else upper}{closing}, got {value!r}.')


def _base_type(field) -> type:
  """int for `int` and `Optional[int]`, and so on."""
  args = [a for a in typing.get_args(field.type) if a is not type(None)]
  return args[0] if args else field.type


def define_flags(flag_values=None, classes: Sequence[type] = CONFIG_CLASSES) -> None:
  """Defines one absl flag per field of `classes`; values are checked by `validate`."""
  from absl import flags  # pylint: disable=g-import-not-at-top
  flag_values = flags.FLAGS if flag_values is None else flag_values
  definers = {int: flags.DEFINE_integer, float: flags.DEFINE_float, str: flags.DEFINE_string,
              bool: flags.DEFINE_bool}
  for cls in classes:
    for field in dataclasses.fields(cls):
      definers[_base_type(field)](field.name, field.default, field.metadata['help'],
                                  flag_values=flag_values)


def from_flags(cls: type, flag_values=None):
  """An instance of `cls` from the parsed flags of the same names."""
  from absl import flags  # pylint: disable=g-import-not-at-top
  flag_values = flags.FLAGS if flag_values is None else flag_values
  return cls(**{f.name: flag_values[f.name].value for f in dataclasses.fields(cls)})


def to_flags(*configs) -> list:
  """Command-line flags that reproduce `configs` (fields at their default are left out)."""
  args = []
  for config in configs:
    for field in dataclasses.fields(config):
      value = getattr(config, field.name)
      if value != field.default:
        args.append(f'--{field.name}={value}')
  return args


def _default_text(field) -> str:
  if field.metadata['default_text'] is not None:
    return field.metadata['default_text']
  return '-' if field.default is None else f'`{field.default}`' if isinstance(
      field.default, str) else str(field.default)


def flag_table_markdown(classes: Sequence[type] = CONFIG_CLASSES) -> str:
  """The flag table of docs/experiments.md, generated from the config fields."""
  lines = ['| flag | default | meaning |', '|---|---|---|']
  for cls in classes:
    for field in dataclasses.fields(cls):
      lines.append(f'| `--{field.name}` | {_default_text(field)} | {field.metadata["help"]} |')
  return '\n'.join(lines)


def attack_table_markdown() -> str:
  """The attack table of docs/experiments.md, from the attack registry."""
  lines = ['| `--attack` | what the malicious clients do | what the attacker reads |',
           '|---|---|---|']
  lines += [f'| `{name}` | {attacks.spec(name).help} | {attacks.spec(name).knows} |'
            for name in ATTACKS]
  return '\n'.join(lines)


def defense_table_markdown() -> str:
  """The defense table of docs/experiments.md, from the defense registry."""
  lines = ['| `--defense` | what | reports TPR/TNR |', '|---|---|---|']
  lines += [f'| `{name}` | {defenses.defense(name).help} | '
            f"{'yes' if defenses.defense(name).filtering else '-'} |" for name in DEFENSES]
  return '\n'.join(lines)


GENERATED_TABLES = (flag_table_markdown, attack_table_markdown, defense_table_markdown)


def write_generated_tables(path: str) -> None:
  """Replaces each generated table in the Markdown file `path` (found by its header row)."""
  with open(path) as f:
    lines = f.read().split('\n')
  for make in GENERATED_TABLES:
    table = make().split('\n')
    start = lines.index(table[0])
    stop = start
    while stop < len(lines) and lines[stop].startswith('|'):
      stop += 1
    lines[start:stop] = table
  with open(path, 'w') as f:
    f.write('\n'.join(lines))


if __name__ == '__main__':
  import sys  # pylint: disable=g-import-not-at-top
  if len(sys.argv) > 1:
    write_generated_tables(sys.argv[1])  # e.g. python -m experiments.config docs/experiments.md
  else:
    print('\n\n'.join(make() for make in GENERATED_TABLES))
