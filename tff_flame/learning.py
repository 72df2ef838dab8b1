"""FedAvg learning processes with FLAME, including the paper's model-space clustering.

A TFF aggregator receives only the client updates delta_i = G - W_i. The paper
clusters the local models W_i, so FLAME then needs the global model G: the
process composed here hands the server's current trainable weights to the
aggregator, in the same round structure as
`tff.learning.templates.compose_learning_process`.
"""

from __future__ import annotations

from typing import Callable, Optional

import numpy as np
import tensorflow_federated as tff

from tff_flame import flame as flame_lib


def compose_learning_process_with_global_model(
    initial_model_weights_fn: tff.Computation,
    distributor: tff.learning.templates.DistributionProcess,
    client_work: tff.learning.templates.ClientWorkProcess,
    aggregator: tff.templates.MeasuredProcess,
    finalizer: tff.learning.templates.FinalizerProcess,
) -> tff.learning.templates.LearningProcess:
  """`compose_learning_process` whose aggregator is `next(state, updates, global_trainable)`.

  The aggregator's client values are whatever `client_work` puts in
  `ClientResult.update` (model deltas, or deltas with a payload).
  """
  client_data_type = client_work.next.type_signature.parameter[2]
  algorithm_state = tff.learning.templates.LearningAlgorithmState

  @tff.federated_computation()
  def init_fn():
    weights = tff.federated_eval(initial_model_weights_fn, tff.SERVER)
    return tff.federated_zip(algorithm_state(
        weights, distributor.initialize(), client_work.initialize(),
        aggregator.initialize(), finalizer.initialize()))

  @tff.federated_computation(init_fn.type_signature.result, client_data_type)
  def next_fn(state, client_data):
    distributed = distributor.next(state.distributor, state.global_model_weights)
    work = client_work.next(state.client_work, distributed.result, client_data)
    aggregated = aggregator.next(state.aggregator, work.result.update,
                                 state.global_model_weights.trainable)
    finalized = finalizer.next(state.finalizer, state.global_model_weights, aggregated.result)
    new_state = tff.federated_zip(algorithm_state(
        finalized.result, distributed.state, work.state, aggregated.state, finalized.state))
    metrics = tff.federated_zip(dict(
        distributor=distributed.measurements, client_work=work.measurements,
        aggregator=aggregated.measurements, finalizer=finalized.measurements))
    return tff.learning.templates.LearningProcessOutput(new_state, metrics)

  state_type = next_fn.type_signature.parameter[0].member

  @tff.tensorflow.computation(state_type)
  def get_model_weights_fn(state):
    return state.global_model_weights

  @tff.tensorflow.computation(state_type, state_type.global_model_weights)
  def set_model_weights_fn(state, model_weights):
    return algorithm_state(model_weights, state.distributor, state.client_work,
                           state.aggregator, state.finalizer)

  return tff.learning.templates.LearningProcess(
      init_fn, next_fn, get_model_weights_fn, set_model_weights_fn)


def compose_fed_avg_with_global_model(
    initial_model_weights_fn: tff.Computation,
    client_work: tff.learning.templates.ClientWorkProcess,
    aggregator: tff.templates.MeasuredProcess,
    server_optimizer: tff.learning.optimizers.Optimizer,
) -> tff.learning.templates.LearningProcess:
  """FedAvg's broadcast and optimizer finalizer around a client work and a
  global-model aggregator (see `compose_learning_process_with_global_model`)."""
  weights_type = initial_model_weights_fn.type_signature.result
  return compose_learning_process_with_global_model(
      initial_model_weights_fn, tff.learning.templates.build_broadcast_process(weights_type),
      client_work, aggregator,
      tff.learning.templates.build_apply_optimizer_finalizer(server_optimizer, weights_type))


def build_flame_fed_avg(
    model_fn: Callable[[], tff.learning.models.VariableModel],
    client_optimizer_fn: tff.learning.optimizers.Optimizer,
    server_optimizer_fn: Optional[tff.learning.optimizers.Optimizer] = None,
    flame: Optional[flame_lib.FlameFactory] = None,
    client_work: Optional[tff.learning.templates.ClientWorkProcess] = None,
) -> tff.learning.templates.LearningProcess:
  """Unweighted FedAvg with FLAME; clusters in `flame.clustering_space`.

  Args:
    model_fn: no-arg callable returning a `tff.learning.models.VariableModel`.
    client_optimizer_fn: client optimizer (e.g. `tff.learning.optimizers.build_sgdm`).
    server_optimizer_fn: server optimizer; default SGD with learning rate 1.0.
    flame: the FLAME factory; default `FlameFactory(clustering_space='model')`,
      the paper's space.
    client_work: a custom client work process whose updates are model deltas;
      default TFF's model-delta client work with uniform weighting.
  """
  flame = flame or flame_lib.FlameFactory(clustering_space='model')
  server_optimizer = server_optimizer_fn or tff.learning.optimizers.build_sgdm(1.0)

  @tff.tensorflow.computation()
  def initial_model_weights_fn():
    return tff.learning.models.ModelWeights.from_model(model_fn())

  weights_type = initial_model_weights_fn.type_signature.result
  if client_work is None:
    client_work = tff.learning.templates.build_model_delta_client_work(
        model_fn, client_optimizer_fn,
        client_weighting=tff.learning.ClientWeighting.UNIFORM)
  if flame.requires_global_model:
    return compose_fed_avg_with_global_model(
        initial_model_weights_fn, client_work,
        flame.create_gathered(weights_type.trainable), server_optimizer)
  # TFF's composer takes a weighted aggregator; FLAME ignores the weights.
  return tff.learning.templates.compose_learning_process(
      initial_model_weights_fn, tff.learning.templates.build_broadcast_process(weights_type),
      client_work, flame.as_weighted().create(weights_type.trainable, tff.TensorType(np.float32)),
      tff.learning.templates.build_apply_optimizer_finalizer(server_optimizer, weights_type))
