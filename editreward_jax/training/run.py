"""What a training run derives from its config before any data flows: the model setup, tokenizer, optimizer, abstract
train state and the jitted step over a mesh (`prepare(config, mesh, rows).train_step(mesh, batch)`), and the
placement of micro-batches as global arrays. No input pipeline or checkpointing here, so the step can be built and
timed (launch.bench) without Grain.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping

import jax

from editreward_jax import batching, sharding
from editreward_jax.training import optimizer as opt_lib
from editreward_jax.training import state as state_lib
from editreward_jax.training.config import TrainConfig
from editreward_jax.training.step import LossSettings, make_train_step, step_inputs


def total_steps(config: TrainConfig, train_rows: int) -> int:
  """train.steps, or with train.epochs > 0: epochs x source rows / pairs per step (an epoch counts rows)."""
  if config.train.epochs > 0:
    return max(1, math.ceil(config.train.epochs * train_rows / config.train.batch_pairs))
  return config.train.steps


def global_batch(micro_batches: list[Mapping[str, Any]], shardings: Any) -> Any:
  """Stacks this process's micro-batches on a leading axis and assembles the global arrays (one call for the whole
  tree: on one process a single device_put)."""
  local = jax.tree.map(lambda *xs: batching.stack(xs), *[step_inputs(b) for b in micro_batches])
  return jax.make_array_from_process_local_data(shardings, local)


def stacked_shardings(batch: Mapping[str, Any], mesh) -> Any:
  per_batch = sharding.batch_shardings(step_inputs(batch), mesh)
  return jax.tree.map(lambda s: jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(None, *s.spec)),
                      per_batch)


@dataclasses.dataclass(frozen=True)
class Run:
  """Everything a run derives from its config before training: model, tokenizer, optimizer, abstract state."""
  config: TrainConfig
  setup: state_lib.ModelSetup
  tokenizer: Any
  reward_id: int
  steps: int
  graphdef: Any
  abstract: Any          # full parameter tree, ShapeDtypeStructs with shardings
  frozen_abstract: Any
  state_abstract: Any    # {"step", "params", "opt_state"}
  tx: Any
  lr: Any

  def partition(self, params: Any) -> tuple[Any, Any]:
    return opt_lib.partition(params, self.config.optimizer.lr_multipliers, self.config.train.embedding,
                             self.reward_id)

  def merge(self, trainable: Any, frozen: Any) -> Any:
    return opt_lib.merge(trainable, frozen, self.reward_id)

  def initial_state(self) -> tuple[dict[str, Any], Any]:
    """Step 0: (train state, frozen parameters) from the base model or a fresh init."""
    trainable, frozen = self.partition(state_lib.initial_params(self.setup, self.abstract, self.config.train.seed))
    return state_lib.init_train_state(self.tx, trainable, self.state_abstract), frozen

  def train_step(self, mesh, example_batch: Mapping[str, Any]):
    """(the jitted step over the mesh, the shardings of its stacked micro-batches)."""
    c = self.config
    settings = LossSettings(c.train.objective, str(c.train.loss_kind), c.train.dimension_weight, str(c.model.fusion))
    step = make_train_step(self.graphdef, self.tx, self.lr, settings, self.reward_id)
    batch_shardings = stacked_shardings(example_batch, mesh)
    state_shardings = state_lib.shardings_of(self.state_abstract)
    jitted = jax.jit(step, in_shardings=(state_shardings, state_lib.shardings_of(self.frozen_abstract),
                                         batch_shardings, None),
                     out_shardings=(state_shardings, None), donate_argnums=0)
    return jitted, batch_shardings


def prepare(config: TrainConfig, mesh, train_rows: int, setup: state_lib.ModelSetup | None = None) -> Run:
  setup = setup or state_lib.model_setup(config)
  tokenizer = state_lib.load_run_tokenizer(setup)
  reward_id = state_lib.reward_token_id(tokenizer)
  steps = total_steps(config, train_rows)
  graphdef, abstract = state_lib.abstract_model(setup, mesh)
  trainable_abs, frozen_abs = state_lib.split_abstract(config, abstract, reward_id, mesh)
  tx, lr = opt_lib.make_optimizer(config.optimizer, steps, trainable_abs)
  return Run(config, setup, tokenizer, reward_id, steps, graphdef, abstract, frozen_abs,
             state_lib.abstract_train_state(tx, trainable_abs, mesh), tx, lr)
