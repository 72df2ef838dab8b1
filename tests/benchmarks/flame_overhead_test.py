"""The profile's bookkeeping in benchmarks.flame_overhead: perf samples sorted by side and
category (no perf run here; the text is what `perf script -F pid,ip,sym,dso` prints)."""

import pathlib
import sys

import pytest

from benchmarks import flame_overhead

SCRIPT = '''\
  101  7f0000001000 __memmove_avx512_unaligned_erms (/usr/lib/x86_64-linux-gnu/libc.so.6)
  101  ffffffff81000000 clear_page_erms ([kernel.kallsyms])
  101  ffffffff81000010 finish_task_switch.isra.0 ([kernel.kallsyms])
  102  55db00000000 Eigen::internal::gebp_kernel<double, double, long>::operator() (/x/worker_binary)
  102  55db00000010 tensorflow::functor::FillPhiloxRandom<Eigen::ThreadPoolDevice> (/x/worker_binary)
  102  55db00000020 Eigen::internal::TensorExecutor<Eigen::TensorAssignOp<float>> (/x/worker_binary)
  200  7f0000002000 google::protobuf::io::CodedOutputStream::WriteRaw (/y/libprotobuf.so)
  200  7f0000002000 __memmove_avx512_unaligned_erms (/usr/lib/x86_64-linux-gnu/libc.so.6)
  300  7f0000003000 _PyEval_EvalFrameDefault (/usr/lib/libpython3.11.so)
  101
'''


def test_samples_are_counted_per_side_and_category():
  counts, symbols = flame_overhead.perf_samples(SCRIPT, dict(worker={101, 102}, caller={200}))
  assert dict(counts['worker']) == {
      'copies (memmove)': 1, 'kernel: new pages, faults': 1, 'kernel: other': 1,
      'matrix products (Gram)': 1, 'noise (random normal)': 1, 'other TF kernels (Eigen)': 1}
  assert dict(counts['caller']) == {'serialization (protobuf, gRPC)': 1, 'copies (memmove)': 1}
  # pid 300 is neither side; the line without a symbol is skipped.
  assert sum(symbols['worker'].values()) == 6
  assert symbols['caller'][('libc.so.6', '__memmove_avx512_unaligned_erms')] == 1


def test_every_symbol_has_a_category():
  assert flame_overhead.category_of('libfoo.so', 'anything') == 'other'
  assert flame_overhead.category_of('libc.so.6', 'malloc') == 'malloc / free'


if __name__ == '__main__':
  # `bazel test` runs this file as a py_test: pytest, with tests/conftest.py.
  tests_dir = pathlib.Path(__file__).absolute().parents[1]
  sys.exit(pytest.main([__file__, '-p', 'no:cacheprovider', f'--confcutdir={tests_dir}',
                        *sys.argv[1:]]))
