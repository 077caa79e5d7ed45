"""The model a run trains and its training state: built concretely (on a mesh) or abstractly (shapes only).

The training state is a pytree {"step", "params", "opt_state"}: `params` holds only what trains (see
`optimizer.partition`), `opt_state` is AdamW's per-group state for those leaves, both sharded like the parameters.
The frozen rest (and lm_head, which nothing uses) is a separate tree, a constant input of the train step.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec

from editreward_jax import model_dir
from editreward_jax.models.config import ModelConfig
from editreward_jax.models.presets import PRESETS
from editreward_jax.models.qwen2_5_vl import RuntimeOptions
from editreward_jax.processing import load_tokenizer
from editreward_jax.prompts import REWARD_TOKEN, Prompts, load_prompts
from editreward_jax.reward import HeadConfig, RewardModel
from editreward_jax.training import optimizer as opt_lib
from editreward_jax.training.config import ConfigError, TrainConfig

Params = dict[str, Any]


@dataclasses.dataclass(frozen=True)
class ModelSetup:
  """What a run knows about its model before any parameter exists."""
  cfg: ModelConfig
  head: HeadConfig
  options: RuntimeOptions
  base: str | None           # model directory the weights come from; None = fresh init from the preset
  tokenizer_dir: str | None
  prompts: Prompts

  def settings(self, config: TrainConfig) -> dict[str, Any]:
    """What a model directory written by this run records beside the weights (editreward.json settings)."""
    return {"rope_mode": str(config.model.rope_mode), "fusion": str(config.model.fusion),
            "prompts": self.prompts.to_dict(), "min_pixels": config.data.min_pixels,
            "max_pixels": config.data.max_pixels, "heads_trained": True}


def model_setup(config: TrainConfig, *, require_base: bool = True) -> ModelSetup:
  """The model of `config`: a base model directory's config, or a preset's shapes for a fresh model.

  With `require_base=False` (dry runs) a base that does not exist yet falls back to the preset's shapes.
  """
  m = config.model
  options = RuntimeOptions(dtype=str(config.runtime.dtype), param_dtype=str(config.runtime.param_dtype),
                           remat=str(config.runtime.remat), attention_impl=str(config.runtime.attention))
  base = m.base if m.base and (require_base or os.path.isdir(m.base)) else None
  if base:
    if not os.path.isdir(base):
      raise ConfigError(f"config.model.base: {base} does not exist (convert a Hugging Face model first: "
                        f"python -m convert.from_hf --base=HF_DIR --out={base})")
    if not os.path.exists(os.path.join(base, model_dir.META_FILE)):
      raise ConfigError(f"config.model.base: {base} is not a model directory ({model_dir.META_FILE} is missing); "
                        f"a Hugging Face directory must be converted first: python -m convert.from_hf "
                        f"--base={base} --out=DIR")
    meta = model_dir.read_meta(base)
    cfg, head = meta.model, meta.head
    tokenizer_dir = m.tokenizer or meta.tokenizer_dir
    recorded = meta.prompts()
  else:
    if m.preset not in PRESETS:
      raise ConfigError(f"config.model.preset: {m.preset!r} is not one of {sorted(PRESETS)}")
    cfg, head, tokenizer_dir, recorded = PRESETS[m.preset], HeadConfig(), m.tokenizer or None, load_prompts()
  prompts = load_prompts(config.data.prompts_file) if config.data.prompts_file else recorded
  return ModelSetup(cfg, head, options, base, tokenizer_dir, prompts)


def load_run_tokenizer(setup: ModelSetup):
  if not setup.tokenizer_dir:
    raise ConfigError("config.model.tokenizer: no tokenizer directory (the base records none)")
  if not os.path.isdir(setup.tokenizer_dir):
    raise ConfigError(f"config.model.tokenizer: {setup.tokenizer_dir} is not a directory")
  return load_tokenizer(setup.tokenizer_dir)


def reward_token_id(tokenizer) -> int:
  return int(tokenizer.convert_tokens_to_ids(REWARD_TOKEN))


def abstract_model(setup: ModelSetup, mesh) -> tuple[nnx.GraphDef, Params]:
  """GraphDef and the full parameter tree as ShapeDtypeStructs carrying each parameter's sharding."""
  graphdef, _, abstract = model_dir.abstract_params(setup.cfg, setup.options, setup.head, mesh)
  return graphdef, abstract


def initial_params(setup: ModelSetup, abstract: Params, seed: int) -> Params:
  """The full parameters: restored from the base, or freshly drawn from `seed`, each placed on its sharding."""
  if setup.base:
    return model_dir.restore_params(setup.base, abstract)

  def init():
    model = RewardModel(setup.cfg, setup.options, setup.head, rngs=nnx.Rngs(seed))
    return nnx.to_pure_dict(nnx.state(model, nnx.Param))

  return jax.jit(init, out_shardings=jax.tree.map(lambda a: a.sharding, abstract))()


def _replicated(mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec())


def split_abstract(config: TrainConfig, abstract: Params, reward_id: int, mesh) -> tuple[Params, Params]:
  """(trainable, frozen) ShapeDtypeStruct trees; the reward row is replicated (one [D] vector)."""
  trainable, frozen = opt_lib.partition(abstract, config.optimizer.lr_multipliers, config.train.embedding,
                                        reward_id, row=_abstract_row)
  if opt_lib.REWARD_ROW in trainable:
    row = trainable[opt_lib.REWARD_ROW]
    trainable[opt_lib.REWARD_ROW] = jax.ShapeDtypeStruct(row.shape, row.dtype, sharding=_replicated(mesh))
  return trainable, frozen


def _abstract_row(table: jax.ShapeDtypeStruct, index: int) -> jax.ShapeDtypeStruct:
  del index
  return jax.ShapeDtypeStruct(table.shape[1:], table.dtype)


def abstract_train_state(tx: optax.GradientTransformation, trainable: Params, mesh) -> dict[str, Any]:
  """ShapeDtypeStructs (with shardings) of {"step", "params", "opt_state"}: moments sharded like their params."""
  opt_shapes = jax.eval_shape(tx.init, trainable)
  replicated = _replicated(mesh)
  masked = lambda x: isinstance(x, optax.MaskedNode)  # multi_transform's stand-in for another group's leaves
  opt_abstract = optax.tree_map_params(
      tx, lambda o, p: o if masked(o) else jax.ShapeDtypeStruct(o.shape, o.dtype, sharding=p.sharding), opt_shapes,
      trainable, transform_non_params=lambda o: jax.ShapeDtypeStruct(o.shape, o.dtype, sharding=replicated),
      is_leaf=masked)
  return {"step": jax.ShapeDtypeStruct((), jnp.int32, sharding=replicated), "params": trainable,
          "opt_state": opt_abstract}


def shardings_of(abstract: Any) -> Any:
  return jax.tree.map(lambda a: a.sharding, abstract)


def init_train_state(tx: optax.GradientTransformation, trainable: Params, abstract_state: Mapping[str, Any]
                     ) -> dict[str, Any]:
  """Step 0: AdamW's state initialised on the parameters' shardings."""
  opt_state = jax.jit(tx.init, out_shardings=shardings_of(abstract_state["opt_state"]))(trainable)
  step = jax.device_put(np.int32(0), abstract_state["step"].sharding)
  return {"step": step, "params": trainable, "opt_state": opt_state}


def per_device_bytes(abstract: Any, mesh_shape: Mapping[str, int]) -> int:
  """Bytes one device holds of a ShapeDtypeStruct tree (each leaf's shard: its dims divided by their mesh axes)."""
  total = 0
  for leaf in jax.tree.leaves(abstract):
    spec = tuple(leaf.sharding.spec) + (None,) * (len(leaf.shape) - len(leaf.sharding.spec))
    shard = 1
    for dim, entry in zip(leaf.shape, spec):
      axes = () if entry is None else (entry if isinstance(entry, tuple) else (entry,))
      shard *= dim // int(np.prod([mesh_shape[a] for a in axes])) if axes else dim
    total += shard * jnp.dtype(leaf.dtype).itemsize
  return int(total)
