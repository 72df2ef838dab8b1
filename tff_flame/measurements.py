"""The measurements every gathering defense reports, built in one place.

Each round's measurements are an ordered dict that starts with the keys every
defense has (the harness reads them by name: `num_clients`, `num_admitted`,
`num_non_finite`, `admitted`), followed by the defense's own keys.
"""

import collections

import tensorflow as tf


def admission_measurements(finite: tf.Tensor, admitted: tf.Tensor,
                           **defense_measurements) -> collections.OrderedDict:
  """OrderedDict of the common keys, then `defense_measurements` in the order given.

  Args:
    finite: bool [n], the clients the defense considered (finite updates).
    admitted: bool [n], the clients whose updates reach the aggregate.
    **defense_measurements: the defense's own measurements.

  Returns num_clients (n), num_admitted, num_non_finite (int32 scalars) and
  admitted (int32 [n], 0/1), then the defense's keys.
  """
  n = tf.shape(finite)[0]
  admitted = tf.cast(admitted, tf.int32)
  return collections.OrderedDict(
      num_clients=n,
      num_admitted=tf.reduce_sum(admitted),
      num_non_finite=n - tf.reduce_sum(tf.cast(finite, tf.int32)),
      admitted=admitted,
      **defense_measurements)
