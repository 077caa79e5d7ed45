"""Export to the PyTorch EditReward layout: import -> export -> import is bit-identical, the export loads strictly onto
transformers' model plus heads, and the PyTorch scorer reproduces the JAX scores."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import jax
import ml_dtypes
import numpy as np
import orbax.checkpoint as ocp
import pytest
import transformers

from convert import from_hf, to_torch
from convert.safetensors_io import CheckpointReader, save_file
from editreward_jax import model_dir, scoring
from editreward_jax.prompts import DIMENSIONS, REWARD_TOKEN

pytest.importorskip("torch")  # what follows needs PyTorch: without it the module is skipped, not an error
from convert.torch_reward import EditRewardTorch
from torch_editreward import SHORT_PROMPTS, SMALL_PIXELS, as_array, import_release, release, sample_edits

pytestmark = pytest.mark.torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOLERANCE = 1e-4  # scores are O(1)


@pytest.fixture(scope="module")
def released(tmp_path_factory):
  return release(tmp_path_factory.mktemp("release"))


def stored_params(ckpt: str) -> dict:
  """Every parameter of a model directory as stored, dtype included."""
  path = os.path.abspath(os.path.join(ckpt, model_dir.PARAMS_DIR))
  with ocp.PyTreeCheckpointer() as c:
    args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), c.metadata(path).item_metadata.tree)
    return c.restore(path, args=ocp.args.PyTreeRestore(restore_args=args))


@pytest.mark.parametrize("dtype, tie", [("float32", False), ("bfloat16", False), ("float32", True)])
def test_import_export_import_is_bit_identical(released, tmp_path, dtype, tie):
  model, base, weights = release(tmp_path / "tied") if tie else released
  first = import_release(base, weights, tmp_path / "first", param_dtype=dtype)
  export = to_torch.export_torch(first, str(tmp_path / "export"))
  second = from_hf.import_hf(export, str(tmp_path / "second"), reward_weights=os.path.join(export, "model.safetensors"))
  a, b = stored_params(first), stored_params(second)
  assert jax.tree.structure(a) == jax.tree.structure(b)
  backbone_dtype = np.dtype(ml_dtypes.bfloat16 if dtype == "bfloat16" else np.float32)
  for (path, x), y in zip(jax.tree_util.tree_leaves_with_path(a), jax.tree.leaves(b)):
    want_dtype = np.float32 if path[0].key == "heads" else backbone_dtype
    assert x.dtype == y.dtype == want_dtype, jax.tree_util.keystr(path)
    np.testing.assert_array_equal(x, y, err_msg=jax.tree_util.keystr(path))

  reader = CheckpointReader(export)
  assert set(reader.keys()) == set(model.state_dict())  # the released layout, lm_head.weight included when tied
  config = transformers.Qwen2_5_VLConfig.from_pretrained(export)
  assert config.text_config.vocab_size == reader.shape("lm_head.weight")[0] == 1024
  with open(os.path.join(export, to_torch.SETTINGS_FILE)) as f:
    settings = json.load(f)
  assert settings["prompts"] == SHORT_PROMPTS and settings["min_pixels"] == SMALL_PIXELS["min_pixels"]
  assert settings["reward_token"] == REWARD_TOKEN and settings["reward_token_id"] == 1023
  assert settings["head_index"] == {d: i for i, d in enumerate(DIMENSIONS)}
  assert (settings["fusion"], settings["rope_mode"], settings["head"]["hidden"]) == ("mean", "sequential", 1024)


@pytest.mark.parametrize("rope_mode, fusion", [("sequential", "mean"), ("mrope", "sum"), ("sequential", "min")])
def test_torch_scorer_reproduces_jax(released, tmp_path, rope_mode, fusion):
  _, base, weights = released
  ckpt = import_release(base, weights, tmp_path / "ckpt", param_dtype="float32", rope_mode=rope_mode, fusion=fusion)
  export = to_torch.export_torch(ckpt, str(tmp_path / "export"))
  instructions, sources, edits = sample_edits()
  ours = as_array(EditRewardTorch.from_pretrained(export).score(instructions, sources, edits, batch_size=2))
  want = as_array(scoring.load_scorer(ckpt).score(instructions, sources, edits))
  assert 0.1 < np.abs(want).max() < 10
  np.testing.assert_allclose(ours, want, rtol=0, atol=TOLERANCE)


def test_strict_load_refuses_a_missing_key(released, tmp_path):
  _, base, weights = released
  export = to_torch.export_torch(import_release(base, weights, tmp_path / "ckpt"), str(tmp_path / "export"))
  reader = CheckpointReader(export)
  save_file({k: np.array(reader.get(k)) for k in reader.keys() if k != "rm_heads.head_1.0.bias"},
            os.path.join(export, "model.safetensors"))
  with pytest.raises(RuntimeError, match=r"Missing key.*rm_heads\.head_1\.0\.bias"):
    EditRewardTorch.from_pretrained(export)


def test_cli(released, tmp_path):
  _, base, weights = released
  ckpt = import_release(base, weights, tmp_path / "ckpt")
  run = lambda *a: subprocess.run([sys.executable, "-m", "convert.to_torch", *a], capture_output=True, text=True,
                                  cwd=ROOT)
  ok = run(f"--checkpoint={ckpt}", f"--out={tmp_path / 'export'}")
  assert ok.returncode == 0, ok.stderr
  lines = (ok.stdout + ok.stderr).strip().splitlines()  # quiet: no Orbax or transformers INFO logs
  assert len(lines) == 1 and lines[0].startswith(f"wrote {tmp_path / 'export'}"), lines
  assert {"model.safetensors", "config.json", "tokenizer.json", to_torch.SETTINGS_FILE} <= set(
      os.listdir(tmp_path / "export"))
  bad = run(f"--checkpoint={base}", f"--out={tmp_path / 'nothing'}")
  assert bad.returncode != 0
  last = bad.stderr.strip().splitlines()[-1]
  assert last.startswith("error:") and base in last and model_dir.META_FILE in last
  with pytest.raises(FileNotFoundError, match="is not a model directory"):
    to_torch.export_torch(str(tmp_path), str(tmp_path / "nothing"))


def test_torch_scorer_imports_no_jax():
  code = "import sys, convert.torch_reward; assert not [m for m in sys.modules if m.split('.')[0] in ('jax', 'flax')]"
  run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
  assert run.returncode == 0, run.stderr
