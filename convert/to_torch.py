"""Export a model directory to the PyTorch EditReward layout.

  python -m convert.to_torch --checkpoint=CKPT --out=DIR

DIR gets
  model.safetensors         the full state dict under the released EditReward names (`model.visual.*`,
                            `model.language_model.*`, `lm_head.weight`, `rm_heads.head_{0,1}.{0,3,5}.*`): the backbone
                            in its stored dtype, the heads in float32. It loads strictly onto transformers'
                            Qwen2_5_VLForConditionalGeneration (vocabulary resized to the tokenizer) plus the heads;
                            with tied embeddings `lm_head.weight` is a copy of the table, as such a load expects.
  config.json               the Hugging Face config, vocabulary = the resized table
  tokenizer files           the checkpoint's tokenizer, `<|Reward|>` included
  editreward_settings.json  what scoring needs besides weights (`export_settings`)
Parameters are restored one at a time (Orbax partial restore) and written tensor by tensor, so the host holds one
parameter, never a copy of the model. One parameter means all layers of a stacked one: Orbax stores it as a single
chunk, so reading it layer by layer would decode the whole chunk for every layer.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import math
import os
import shutil
import time
from typing import Any, Callable, Sequence

import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import flags

from convert import hf_keys
from convert.from_hf import EMBED_KEY
from convert.hf_keys import SETTINGS_FILE
from convert.safetensors_io import SINGLE_FILE, save_file
from editreward_jax import cli, model_dir, paths, processing
from editreward_jax.models.config import ModelConfig, to_hf_dict
from editreward_jax.prompts import DIMENSIONS, REWARD_TOKEN

SETTINGS_VERSION = 1
LM_HEAD_KEY = "lm_head.weight"


@dataclasses.dataclass(frozen=True)
class LazyTensor:
  """A tensor that `save_file` reads (through `__array__`) only when it writes its bytes."""
  shape: tuple[int, ...]
  dtype: np.dtype
  load: Callable[[], np.ndarray]

  @property
  def size(self) -> int:
    return math.prod(self.shape)

  def __array__(self, dtype=None, copy=None) -> np.ndarray:
    x = self.load()
    if x.shape != self.shape or x.dtype != self.dtype:
      raise ValueError(f"expected {self.dtype}{list(self.shape)}, read {x.dtype}{list(x.shape)}")
    return x if dtype is None else x.astype(dtype)


class ParamRestorer:
  """Restores single parameters of a model directory's Orbax tree into host memory, keeping only the latest, so the
  layers of a stacked parameter, written one after another, cost one read."""

  def __init__(self, directory: str, checkpointer: ocp.PyTreeCheckpointer):
    self.path = os.path.abspath(os.path.join(directory, model_dir.PARAMS_DIR))
    self.checkpointer = checkpointer
    self.stored = checkpointer.metadata(self.path).item_metadata
    self._key: tuple[str, ...] | None = None
    self._value: np.ndarray | None = None

  def metadata(self, path: tuple[str, ...]):
    try:
      return _get(self.stored, path)
    except (KeyError, TypeError):
      raise ValueError(f"{self.path}: parameter {'/'.join(path)} is missing") from None

  def __call__(self, path: tuple[str, ...]) -> np.ndarray:
    if path != self._key:
      self._key, self._value = None, None  # free the previous parameter first
      meta = self.metadata(path)
      args = ocp.args.PyTreeRestore(item=_nest(path, jax.ShapeDtypeStruct(meta.shape, meta.dtype)),
                                    restore_args=_nest(path, ocp.RestoreArgs(restore_type=np.ndarray)),
                                    partial_restore=True)
      self._key, self._value = path, _get(self.checkpointer.restore(self.path, args=args), path)
      logging.info("restored %s %s%s", "/".join(path), self._value.dtype, list(self._value.shape))
    return self._value


def _get(tree, path: tuple[str, ...]):
  for key in path:
    tree = tree[key]
  return tree


def _nest(path: tuple[str, ...], leaf) -> dict:
  for key in reversed(path):
    leaf = {key: leaf}
  return leaf


def hf_tensors(meta: model_dir.ModelMeta, restore: ParamRestorer) -> list[tuple[str, LazyTensor]]:
  """Every tensor of the EditReward state dict, in the order that reads each stored parameter once: checks the stored
  shapes against the model config first, so a mismatch fails before anything is written."""
  cfg = meta.model
  _, _, abstract = model_dir.abstract_params(cfg, head=meta.head)
  specs = [(("backbone",) + s.path, s) for s in hf_keys.param_specs(cfg)]
  specs += [(s.path, s) for s in hf_keys.head_specs(DIMENSIONS)]
  out: list[tuple[str, LazyTensor]] = []
  for path, spec in specs:
    stored, want = restore.metadata(path), _get(abstract, path)
    if tuple(stored.shape) != want.shape:
      raise ValueError(f"{restore.path}: parameter {'/'.join(path)} has shape {tuple(stored.shape)}, the model "
                       f"config needs {want.shape}")
    shape = hf_keys.hf_shape(spec, want.shape[1:] if spec.num_layers else want.shape, cfg)
    for i, key in enumerate(spec.hf_keys()):
      load = functools.partial(_hf_tensor, restore, path, spec, i if spec.num_layers else None, cfg)
      tensor = LazyTensor(shape, np.dtype(stored.dtype), load)
      out.append((key, tensor))
      if key == EMBED_KEY and cfg.text.tie_word_embeddings:
        out.append((LM_HEAD_KEY, tensor))  # a strict load onto the tied model still expects this name
  return out


def _hf_tensor(restore: ParamRestorer, path: tuple[str, ...], spec: hf_keys.ParamSpec, layer: int | None,
               cfg: ModelConfig) -> np.ndarray:
  value = restore(path)
  return hf_keys.to_hf(spec, value if layer is None else value[layer], cfg)


def export_settings(meta: model_dir.ModelMeta, reward_token_id: int) -> dict[str, Any]:
  """The scoring settings a PyTorch user needs besides weights, config and tokenizer."""
  s = meta.settings
  return {
      "format_version": SETTINGS_VERSION,
      "head": dataclasses.asdict(meta.head),
      "head_index": {d: i for i, d in enumerate(DIMENSIONS)},  # dimension -> i of rm_heads.head_{i}
      "fusion": s.get("fusion", "mean"),
      "rope_mode": s.get("rope_mode", "sequential"),
      "prompts": meta.prompts().to_dict(),
      **meta.pixels(),
      "reward_token": REWARD_TOKEN,
      "reward_token_id": reward_token_id,
  }


def export_torch(checkpoint: str, out: str) -> str:
  """Writes the PyTorch export of `checkpoint` (any CKPT) at `out`; returns `out`."""
  meta = model_dir.resolve(checkpoint)
  out = paths.expand(out)
  if meta.tokenizer_dir is None:
    raise ValueError(f"{meta.directory} has no {model_dir.TOKENIZER_DIR}/ directory: the export needs the "
                     f"tokenizer with {REWARD_TOKEN}")
  tokenizer = processing.load_tokenizer(meta.tokenizer_dir)
  reward_id = processing.add_reward_token(tokenizer)
  if len(tokenizer) > meta.model.text.vocab_size:
    raise ValueError(f"{meta.tokenizer_dir}: the tokenizer has {len(tokenizer)} tokens, more than the "
                     f"{meta.model.text.vocab_size} embedding rows")
  os.makedirs(out, exist_ok=True)
  with ocp.PyTreeCheckpointer() as checkpointer:
    tensors = hf_tensors(meta, ParamRestorer(meta.params_dir, checkpointer))
    save_file(tensors, os.path.join(out, SINGLE_FILE), metadata={"format": "pt"})
  with open(os.path.join(out, "config.json"), "w") as f:
    json.dump(to_hf_dict(meta.model), f, indent=2)
  for name in os.listdir(meta.tokenizer_dir):
    if os.path.isfile(os.path.join(meta.tokenizer_dir, name)):
      shutil.copyfile(os.path.join(meta.tokenizer_dir, name), os.path.join(out, name))
  with open(os.path.join(out, SETTINGS_FILE), "w") as f:
    json.dump(export_settings(meta, reward_id), f, indent=2)
  return out


def main(argv: Sequence[str]) -> None:
  del argv
  cli.quiet_logs(flags.FLAGS.verbose)
  start = time.time()
  with cli.one_line_errors():
    out = export_torch(flags.FLAGS.checkpoint, flags.FLAGS.out)
  print(f"wrote {out} in {time.time() - start:.1f}s")


def define_flags() -> None:
  cli.verbose_flag()
  flags.DEFINE_string("checkpoint", None, "Model directory to export (written by convert.from_hf or training).",
                      required=True)
  flags.DEFINE_string("out", None, "Output directory: model.safetensors, config.json, tokenizer files and "
                      f"{SETTINGS_FILE}.", required=True)


if __name__ == "__main__":
  define_flags()
  cli.run(main)
