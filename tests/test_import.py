"""Hugging Face import: key layouts, shards, dtypes, and one clear error for mismatched checkpoints."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import jax
import ml_dtypes
import numpy as np
import orbax.checkpoint as ocp
import pytest
from flax import nnx

from convert import from_hf
from convert.safetensors_io import CheckpointReader, save_file
from editreward_jax import model_dir

pytest.importorskip("torch")  # what follows needs PyTorch: without it the module is skipped, not an error
import torch

pytestmark = pytest.mark.torch


def to_numpy(t: torch.Tensor) -> np.ndarray:
  if t.dtype == torch.bfloat16:
    return t.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
  return t.numpy()


def write_hf_dir(src_dir: str, dst: str, tensors: dict[str, np.ndarray], shards: int = 1) -> str:
  os.makedirs(dst, exist_ok=True)
  shutil.copyfile(os.path.join(src_dir, "config.json"), os.path.join(dst, "config.json"))
  if shards == 1:
    save_file(tensors, os.path.join(dst, "model.safetensors"))
    return dst
  names = sorted(tensors)
  weight_map = {}
  for s in range(shards):
    fname = f"model-{s + 1:05d}-of-{shards:05d}.safetensors"
    part = {k: tensors[k] for k in names[s::shards]}
    save_file(part, os.path.join(dst, fname))
    weight_map.update({k: fname for k in part})
  with open(os.path.join(dst, "model.safetensors.index.json"), "w") as f:
    json.dump({"metadata": {}, "weight_map": weight_map}, f)
  return dst


@pytest.fixture(scope="module")
def in_memory_tensors(tiny_torch):
  """The in-memory key layout (model.visual.*, model.language_model.*), as EditReward state dicts use."""
  return {k: to_numpy(v) for k, v in tiny_torch.state_dict().items()}


def params_of(ckpt: str):
  """Backbone parameters (NumPy) and metadata of a model directory."""
  model, meta = model_dir.load_model(ckpt)
  return jax.tree.map(np.asarray, nnx.to_pure_dict(nnx.state(model.backbone, nnx.Param))), meta


def assert_trees_equal(a, b):
  la, lb = jax.tree.leaves_with_path(a), jax.tree.leaves_with_path(b)
  assert [p for p, _ in la] == [p for p, _ in lb]
  for (p, x), (_, y) in zip(la, lb):
    np.testing.assert_array_equal(x, y, err_msg=jax.tree_util.keystr(p))


def test_both_layouts_and_shards_import_identically(tiny_hf_dir, tiny_ckpt, in_memory_tensors, tmp_path):
  assert any(k.startswith("model.layers.") for k in CheckpointReader(tiny_hf_dir).keys())  # older on-disk layout
  sharded = write_hf_dir(tiny_hf_dir, str(tmp_path / "hf"), in_memory_tensors, shards=3)
  ckpt = from_hf.import_hf(sharded, str(tmp_path / "ckpt"), param_dtype="float32")
  ours, _ = params_of(ckpt)
  ref, _ = params_of(tiny_ckpt)
  assert_trees_equal(ours, ref)


def test_imported_values_are_the_torch_values(tiny_torch, tiny_ckpt):
  params, meta = params_of(tiny_ckpt)
  sd = tiny_torch.state_dict()
  q = params["decoder"]["layers"]["self_attn"]["q_proj"]["kernel"][1]  # [D, heads, head_dim]
  q_torch = sd["model.language_model.layers.1.self_attn.q_proj.weight"].numpy()
  np.testing.assert_array_equal(q[:, 2], q_torch[2 * q.shape[2]:3 * q.shape[2]].T)  # head 2: its own rows
  np.testing.assert_array_equal(q.reshape(q.shape[0], -1), q_torch.T)
  qkv = params["visual"]["blocks"]["attn"]["qkv"]["kernel"][0]  # [C, q/k/v, heads, head_dim]
  c = qkv.shape[0]
  k_torch = sd["model.visual.blocks.0.attn.qkv.weight"].numpy()[c:2 * c]
  np.testing.assert_array_equal(qkv[:, 1].reshape(c, c), k_torch.T)
  conv = sd["model.visual.patch_embed.proj.weight"].numpy()
  np.testing.assert_array_equal(params["visual"]["patch_embed"]["kernel"], conv.reshape(conv.shape[0], -1).T)
  np.testing.assert_array_equal(params["embed_tokens"], sd["model.language_model.embed_tokens.weight"].numpy())
  assert meta.settings["rope_mode"] == "sequential"


def test_bf16_checkpoint_keeps_its_dtype(tiny_hf_dir, tiny_torch, tmp_path):
  bf16 = {k: to_numpy(v.to(torch.bfloat16)) for k, v in tiny_torch.state_dict().items()}
  hf = write_hf_dir(tiny_hf_dir, str(tmp_path / "hf"), bf16)
  ckpt = from_hf.import_hf(hf, str(tmp_path / "ckpt"))
  with ocp.StandardCheckpointer() as c:
    stored = c.metadata(os.path.abspath(os.path.join(ckpt, model_dir.PARAMS_DIR))).item_metadata
  assert stored["backbone"]["decoder"]["layers"]["mlp"]["up_proj"]["kernel"].dtype == ml_dtypes.bfloat16
  params, _ = params_of(ckpt)
  np.testing.assert_array_equal(params["decoder"]["layers"]["mlp"]["up_proj"]["kernel"][0],
                                bf16["model.language_model.layers.0.mlp.up_proj.weight"].T.astype(np.float32))


def test_embedding_is_sized_from_the_tensor(tiny_hf_dir, in_memory_tensors, tmp_path):
  t = dict(in_memory_tensors)
  for k in ("model.language_model.embed_tokens.weight", "lm_head.weight"):
    t[k] = t[k][:-4]  # e.g. a table resized to len(tokenizer)
  ckpt = from_hf.import_hf(write_hf_dir(tiny_hf_dir, str(tmp_path / "hf"), t), str(tmp_path / "ckpt"))
  assert model_dir.read_meta(ckpt).model.text.vocab_size == t["lm_head.weight"].shape[0]


@pytest.mark.parametrize("case", ["missing", "unexpected", "misshaped"])
def test_mismatched_checkpoint_names_the_key(tiny_hf_dir, in_memory_tensors, tmp_path, case):
  t = dict(in_memory_tensors)
  key = "model.visual.blocks.2.mlp.up_proj.weight"
  if case == "missing":
    del t[key]
  elif case == "unexpected":
    t["model.visual.blocks.7.mlp.up_proj.weight"] = t[key]
    key = "model.visual.blocks.7.mlp.up_proj.weight"
  else:
    t[key] = t[key][:, :-1]
  hf = write_hf_dir(tiny_hf_dir, str(tmp_path / "hf"), t)
  with pytest.raises(from_hf.CheckpointMismatchError, match=f"{case.replace('misshaped', 'mis-shaped')} keys") as e:
    from_hf.import_hf(hf, str(tmp_path / "ckpt"))
  assert key in str(e.value)


def test_cli(tiny_hf_dir, tmp_path):
  out = tmp_path / "ckpt"
  env = dict(os.environ, HOME=str(tmp_path))
  run = lambda *a: subprocess.run([sys.executable, "-m", "convert.from_hf", *a], capture_output=True, text=True,
                                  cwd=os.path.dirname(os.path.dirname(__file__)), env=env)
  ok = run(f"--base={tiny_hf_dir}", "--out=~/ckpt")  # as a shell passes --flag=~/x: unexpanded
  assert ok.returncode == 0, ok.stderr
  assert (out / "editreward.json").exists() and (out / "params").is_dir()
  # Quiet by default: the "no tokenizer" warning and the closing line, no library INFO logs.
  lines = (ok.stdout + ok.stderr).strip().splitlines()
  assert len(lines) <= 2 and ok.stdout.startswith(f"wrote {out} "), lines
  verbose = run(f"--base={tiny_hf_dir}", f"--out={tmp_path / 'again'}", "--verbose")
  assert len((verbose.stdout + verbose.stderr).splitlines()) > 10
  bad = run(f"--base={tmp_path / 'nowhere'}", f"--out={out}")
  assert bad.returncode != 0
  assert bad.stderr.strip().splitlines() == [f"error: {tmp_path / 'nowhere'}: not a directory (expected a Hugging "
                                             "Face model directory)"]


def _broken_copy(tiny_hf_dir, dst) -> str:
  shutil.copytree(tiny_hf_dir, dst)
  return str(dst)


def test_cli_reports_a_broken_checkpoint_in_one_line(tiny_hf_dir, tmp_path):
  run = lambda base: subprocess.run([sys.executable, "-m", "convert.from_hf", f"--base={base}",
                                     f"--out={tmp_path / 'out'}"], capture_output=True, text=True,
                                    cwd=os.path.dirname(os.path.dirname(__file__)))
  no_field = _broken_copy(tiny_hf_dir, tmp_path / "no_field")
  with open(os.path.join(no_field, "config.json")) as f:
    config = json.load(f)
  del config["text_config"]["hidden_size"]
  with open(os.path.join(no_field, "config.json"), "w") as f:
    json.dump(config, f)
  truncated = _broken_copy(tiny_hf_dir, tmp_path / "truncated")
  weights = os.path.join(truncated, "model.safetensors")
  os.truncate(weights, os.path.getsize(weights) - 100)
  for base, message in ((no_field, f"error: {no_field}/config.json: required field text_config.hidden_size is "
                                    "missing"),
                        (truncated, f"error: {weights}: tensor ")):
    result = run(base)
    lines = [line for line in result.stderr.strip().splitlines() if "has no tokenizer files" not in line]
    assert result.returncode == 1 and len(lines) == 1 and lines[0].startswith(message), result.stderr


def test_an_import_killed_midway_leaves_a_directory_that_is_refused(tiny_hf_dir, tiny_ckpt, tmp_path):
  out = str(tmp_path / "ckpt")
  shutil.copytree(tiny_ckpt, out)  # a complete model directory, overwritten by an import that dies
  model_dir.resolve(out)
  script = (
      "import os, signal, sys\n"
      "from convert import from_hf\n"
      "from editreward_jax import model_dir\n"
      "save = model_dir.save_params\n"
      "def save_then_die(directory, params):\n"
      "  save(directory, params)\n"
      "  os.kill(os.getpid(), signal.SIGKILL)  # after the parameters, before tokenizer and metadata\n"
      "model_dir.save_params = save_then_die\n"
      "from_hf.import_hf(sys.argv[1], sys.argv[2])\n")
  result = subprocess.run([sys.executable, "-c", script, tiny_hf_dir, out], capture_output=True, text=True,
                          cwd=os.path.dirname(os.path.dirname(__file__)))
  assert result.returncode == -9, result.stderr
  with pytest.raises(FileNotFoundError, match="incomplete model directory: params/ is there but editreward.json"):
    model_dir.resolve(out)
