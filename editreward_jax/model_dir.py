"""Model directories: Orbax parameters plus everything needed to use them.

A model directory holds (a training workdir too, with params/ in each checkpoints/<step>/)
  editreward.json   format version, the model and head configs, and settings (position mode, fusion, prompts, ...)
  params/           the parameters of the reward model (backbone and heads) as an Orbax checkpoint of a nested dict
  tokenizer/        the tokenizer files, `<|Reward|>` included
No pickle is involved anywhere: Orbax stores arrays with TensorStore and metadata as JSON.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
from typing import Any, Mapping

import jax
import orbax.checkpoint as ocp
from flax import nnx

from editreward_jax import paths, sharding
from editreward_jax.models.config import ModelConfig
from editreward_jax.models.qwen2_5_vl import RuntimeOptions
from editreward_jax.processing import DEFAULT_PIXELS
from editreward_jax.prompts import Prompts, load_prompts, prompts_from_dict
from editreward_jax.reward import HeadConfig, RewardModel

FORMAT_VERSION = 1
META_FILE = "editreward.json"
PARAMS_DIR = "params"
TOKENIZER_DIR = "tokenizer"
CHECKPOINT_DIR = "checkpoints"  # in a training workdir: checkpoints/<step>/params


@dataclasses.dataclass(frozen=True)
class ModelMeta:
  model: ModelConfig
  head: HeadConfig
  settings: dict[str, Any]
  directory: str   # editreward.json and tokenizer/
  params_dir: str  # holds params/: the directory itself, or a training step of a workdir

  @property
  def tokenizer_dir(self) -> str | None:
    path = os.path.join(self.directory, TOKENIZER_DIR)
    return path if os.path.isdir(path) else None

  def prompts(self) -> Prompts:
    """The rubric recorded with the model (the project's default when none was)."""
    recorded = self.settings.get("prompts")
    return prompts_from_dict(recorded, os.path.join(self.directory, META_FILE)) if recorded else load_prompts()

  def pixels(self) -> dict[str, int]:
    """min_pixels / max_pixels of the image resize the model was trained or imported with."""
    return {k: self.settings.get(k, DEFAULT_PIXELS) for k in ("min_pixels", "max_pixels")}


def write_meta(directory: str, cfg: ModelConfig, head: HeadConfig, settings: Mapping[str, Any]) -> None:
  """editreward.json, replaced atomically (a reader sees the old file or the new one, never half of one)."""
  meta = {"format_version": FORMAT_VERSION, "model": cfg.to_dict(), "head": dataclasses.asdict(head),
          "settings": dict(settings)}
  path = os.path.join(directory, META_FILE)
  with open(path + ".tmp", "w") as f:
    json.dump(meta, f, indent=2, sort_keys=True)
  os.replace(path + ".tmp", path)


def _latest_step(workdir: str) -> str | None:
  root = os.path.join(workdir, CHECKPOINT_DIR)
  steps = [int(n) for n in os.listdir(root) if n.isdigit() and os.path.isdir(os.path.join(root, n, PARAMS_DIR))] \
      if os.path.isdir(root) else []
  return os.path.join(root, str(max(steps))) if steps else None


def resolve(checkpoint: str) -> ModelMeta:
  """The model a CKPT argument names: a model directory, a training workdir (its newest step) or one step of it
  (WORKDIR/checkpoints/N, whose editreward.json and tokenizer are the workdir's)."""
  checkpoint = os.path.abspath(paths.expand(checkpoint))
  if not os.path.isdir(checkpoint):
    raise FileNotFoundError(f"checkpoint {checkpoint!r} is not a directory")
  workdir = os.path.dirname(os.path.dirname(checkpoint))
  if os.path.basename(os.path.dirname(checkpoint)) == CHECKPOINT_DIR and os.path.exists(os.path.join(workdir,
                                                                                                     META_FILE)):
    if not os.path.isdir(os.path.join(checkpoint, PARAMS_DIR)):
      raise FileNotFoundError(f"{checkpoint} is not a complete training checkpoint ({PARAMS_DIR}/ is missing)")
    return read_meta(workdir, params_dir=checkpoint)
  if not os.path.exists(os.path.join(checkpoint, META_FILE)):
    if os.path.isdir(os.path.join(checkpoint, PARAMS_DIR)):
      raise FileNotFoundError(f"{checkpoint} is an incomplete model directory: {PARAMS_DIR}/ is there but "
                              f"{META_FILE}, written last, is not (its writing was interrupted); write it again")
    raise FileNotFoundError(f"{checkpoint} is not a model directory or training workdir ({META_FILE} is missing)")
  if os.path.isdir(os.path.join(checkpoint, CHECKPOINT_DIR)):
    step = _latest_step(checkpoint)
    if step is None:
      raise FileNotFoundError(f"training workdir {checkpoint} has no completed checkpoint yet")
    return read_meta(checkpoint, params_dir=step)
  return read_meta(checkpoint)


def read_meta(directory: str, params_dir: str | None = None) -> ModelMeta:
  """The metadata of a model directory; `params_dir` holds its params/ when that is elsewhere (a training step)."""
  path = os.path.join(directory, META_FILE)
  if not os.path.exists(path):
    raise FileNotFoundError(f"{directory} is not a model directory: {META_FILE} is missing")
  with open(path) as f:
    meta = json.load(f)
  if meta.get("format_version") != FORMAT_VERSION:
    raise ValueError(f"{path}: format_version {meta.get('format_version')!r}, expected {FORMAT_VERSION}")
  return ModelMeta(model=ModelConfig.from_dict(meta["model"]), head=HeadConfig(**meta["head"]),
                   settings=meta.get("settings", {}), directory=directory, params_dir=params_dir or directory)


def save_params(directory: str, params: Mapping[str, Any]) -> None:
  """Saves a nested dict of (possibly sharded) arrays under directory/params and waits for completion."""
  path = os.path.abspath(os.path.join(directory, PARAMS_DIR))
  with ocp.StandardCheckpointer() as ckptr:
    ckptr.save(path, params, force=True)
    ckptr.wait_until_finished()


def save_model_dir(directory: str, params: Mapping[str, Any], cfg: ModelConfig, head: HeadConfig,
                   settings: Mapping[str, Any], tokenizer=None, *, primary: bool = True) -> str:
  """Writes a complete model directory: parameters {"backbone", "heads"}, tokenizer (if given) and metadata.

  editreward.json marks a complete directory: it is removed first and written last, so a write that dies midway
  (over an older model too) leaves a directory that `resolve` refuses. Every process calls this (the parameters
  are saved collectively); only the `primary` one writes the files beside them.
  """
  if primary:
    os.makedirs(directory, exist_ok=True)
    with contextlib.suppress(FileNotFoundError):
      os.remove(os.path.join(directory, META_FILE))
  save_params(directory, params)
  if primary:
    if tokenizer is not None:
      tokenizer.save_pretrained(os.path.join(directory, TOKENIZER_DIR))
    write_meta(directory, cfg, head, settings)
  return directory


def restore_params(directory: str, abstract: Mapping[str, Any]) -> Any:
  """Restores directory/params onto the shapes, dtypes and shardings of `abstract` (ShapeDtypeStructs)."""
  path = os.path.abspath(os.path.join(directory, PARAMS_DIR))
  with ocp.StandardCheckpointer() as ckptr:
    return ckptr.restore(path, abstract)


def abstract_params(cfg: ModelConfig, options: RuntimeOptions = RuntimeOptions(), head: HeadConfig = HeadConfig(),
                    mesh=None) -> tuple[nnx.GraphDef, nnx.State, Any]:
  """GraphDef, abstract parameter State, and a pure-dict tree of ShapeDtypeStructs carrying each parameter's
  sharding (one device when `mesh` is None)."""
  abstract = nnx.eval_shape(lambda: RewardModel(cfg, options, head, rngs=nnx.Rngs(0)))
  graphdef, state = nnx.split(abstract, nnx.Param)
  values = nnx.to_pure_dict(state)
  if mesh is None:
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    shardings = jax.tree.map(lambda _: device, values)
  else:
    shardings = sharding.param_shardings(state, mesh)
  tree = jax.tree.map(lambda v, s: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=s), values, shardings)
  return graphdef, state, tree


def build_model(cfg: ModelConfig, params: Mapping[str, Any], options: RuntimeOptions = RuntimeOptions(),
                head: HeadConfig = HeadConfig()) -> RewardModel:
  """A RewardModel holding `params` (nested dict of arrays), without initialising anything."""
  graphdef, state, abstract = abstract_params(cfg, options, head)
  params = jax.tree.map(lambda x, a: x.astype(a.dtype), params, abstract)
  nnx.replace_by_pure_dict(state, params)
  return nnx.merge(graphdef, state)


def load_model(checkpoint: str, options: RuntimeOptions = RuntimeOptions(), mesh=None
               ) -> tuple[RewardModel, ModelMeta]:
  """The reward model of a CKPT (see `resolve`), parameters cast to `options.param_dtype` (heads stay float32)."""
  meta = resolve(checkpoint)
  graphdef, state, abstract = abstract_params(meta.model, options, meta.head, mesh)
  params = restore_params(meta.params_dir, abstract)
  params = jax.tree.map(lambda x, a: x.astype(a.dtype), params, abstract)
  nnx.replace_by_pure_dict(state, params)
  return nnx.merge(graphdef, state), meta
