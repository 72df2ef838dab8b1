"""Attacks by name: one registry that the flags, the binary and the evaluation read.

Adding an attack touches its module, its entry (the `register` call there and
the module's import in `experiments/attacks/__init__.py`) and its tests.
"""

import collections
from typing import Any, Callable

AttackSpec = collections.namedtuple('AttackSpec', 'name help knows build')
_ATTACKS = collections.OrderedDict()


def register(name: str, help: str, knows: str):  # pylint: disable=redefined-builtin
  """Registers `build(config) -> Attack` as `--attack=name`.

  `help` says what the attack does; `knows` what the attacker reads (the
  global model G, earlier global models, its own data, the other attackers'
  updates, the defense), for the docs' attack table.
  """
  def add(build: Callable[[Any], Any]):
    if name in _ATTACKS:
      raise ValueError(f'attack {name!r} is registered twice.')
    _ATTACKS[name] = AttackSpec(name, help, knows, build)
    return build
  return add


def names() -> tuple:
  return tuple(_ATTACKS)


def spec(name: str) -> AttackSpec:
  """The registered attack `name`; ValueError names `--attack` when it is unknown."""
  if name not in _ATTACKS:
    raise ValueError(f'--attack must be one of {", ".join(_ATTACKS)}; got {name!r}.')
  return _ATTACKS[name]


def build_attack(config) -> Any:
  """The configured attack (`config.attack`), built from the config's own fields."""
  return spec(config.attack).build(config)
