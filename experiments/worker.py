"""Serves TFF's C++ executor service on this host, for `--tff_workers`.

  python -m experiments.worker --port=8000

Replaces itself (exec) with TFF's `worker_binary --port=PORT`, listening on
every interface with plain, unauthenticated gRPC: run it on a private network
only. Point one coordinator at a time at it (several at once were not
tried). It ends with SIGINT, SIGTERM or SIGKILL.
"""

import os
import sys

if 'TF_CPP_MIN_LOG_LEVEL' not in os.environ and not any(
    a.startswith(('--verbosity', '-v')) for a in sys.argv[1:]):
  os.environ['TF_CPP_MIN_LOG_LEVEL'] = '3'

# pylint: disable=g-import-not-at-top,wrong-import-position
from absl import app
from absl import flags

from tff_flame import tff_worker

_PORT = flags.DEFINE_integer('port', 8000, 'TCP port to serve on.', lower_bound=1,
                             upper_bound=65535)


def command(port: int) -> list:
  return [tff_worker.worker_binary_path(), f'--port={port}']


def main(argv):
  if len(argv) > 1:
    print(f'error: unexpected arguments {argv[1:]}', file=sys.stderr)
    return 2
  args = command(_PORT.value)
  print(f'TFF executor service on port {_PORT.value}: {" ".join(args)}', flush=True)
  os.execv(args[0], args)


if __name__ == '__main__':
  app.run(main)
