"""Federated tasks for FLAME experiments: client data, Keras model, backdoor.

Each loader returns a `tasks.task.Task`:

- `tasks.digits`: offline image classification on scikit-learn's 8x8 digits,
  pixel-pattern trigger split into DBA parts (shared image pieces in
  `tasks.images`).
- `tasks.emnist`: the same on federated EMNIST through TFF, 28x28 images.
- `tasks.shakespeare`: next-character prediction, trigger phrase followed by an
  attacker-chosen continuation.
- `tasks.nbaiot`: N-BaIoT intrusion detection, feature trigger that makes
  attack traffic look benign.
"""

from tasks.task import Task

__all__ = ['Task']
