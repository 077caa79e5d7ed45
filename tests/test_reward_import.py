"""Importing a released EditReward state dict: the JAX scores equal the reference's PyTorch forward, and malformed
weight files are refused with errors naming the file and the key."""

from __future__ import annotations

import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from flax import nnx
from transformers import AutoTokenizer

from convert import from_hf
from convert.safetensors_io import CheckpointReader, save_file
from editreward_jax import model_dir, processing, scoring
from editreward_jax.prompts import REWARD_TOKEN, prompts_from_dict

pytest.importorskip("torch")  # what follows needs PyTorch: without it the module is skipped, not an error
from torch_editreward import SMALL_PIXELS, as_array, import_release, reference_scores, release, sample_edits

pytestmark = pytest.mark.torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOLERANCE = 1e-4  # scores are O(1)


@pytest.fixture(scope="module")
def released(tmp_path_factory):
  return release(tmp_path_factory.mktemp("release"))


@pytest.fixture(scope="module")
def ckpt(released, tmp_path_factory):
  _, base, weights = released
  return import_release(base, weights, tmp_path_factory.mktemp("imported") / "ckpt", param_dtype="float32")


def test_reward_token_is_appended_to_the_base_tokenizer(released, ckpt):
  _, base, _ = released
  meta = model_dir.read_meta(ckpt)
  tokenizer = processing.load_tokenizer(meta.tokenizer_dir)
  assert tokenizer.convert_tokens_to_ids(REWARD_TOKEN) == len(AutoTokenizer.from_pretrained(base))
  assert meta.model.text.vocab_size == len(tokenizer)


def test_scores_match_the_reference_forward(released, ckpt):
  model, _, _ = released
  instructions, sources, edits = sample_edits()
  meta = model_dir.read_meta(ckpt)
  processor = processing.Processor(processing.load_tokenizer(meta.tokenizer_dir),
                                   prompts_from_dict(meta.settings["prompts"]), **SMALL_PIXELS)
  want = reference_scores(model, [processor(*e) for e in zip(instructions, sources, edits)])
  assert 0.1 < np.abs(want).max() < 10 and np.ptp(want[:, :, 0], axis=0).min() > 100 * TOLERANCE  # O(1), distinct
  deduped = as_array(scoring.load_scorer(ckpt, dedup=True).score(instructions, sources, edits))
  np.testing.assert_allclose(deduped, want, rtol=0, atol=TOLERANCE)
  separate = as_array(scoring.load_scorer(ckpt, dedup=False).score(instructions, sources, edits))
  np.testing.assert_array_equal(deduped, separate)


def test_cli_imports_the_same_parameters(released, ckpt, tmp_path):
  _, base, weights = released
  out = tmp_path / "ckpt"
  run = subprocess.run([sys.executable, "-m", "convert.from_hf", f"--base={base}", f"--reward_weights={weights}",
                        f"--out={out}", "--param_dtype=float32"], capture_output=True, text=True, cwd=ROOT)
  assert run.returncode == 0, run.stderr
  params = [nnx.to_pure_dict(nnx.state(model_dir.load_model(c)[0], nnx.Param)) for c in (str(out), ckpt)]
  assert jax.tree.structure(params[0]) == jax.tree.structure(params[1])
  for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(params[0]), jax.tree.leaves(params[1])):
    np.testing.assert_array_equal(a, b, err_msg=jax.tree_util.keystr(path))


@pytest.mark.parametrize("key, change", [
    ("model.visual.blocks.1.mlp.up_proj.weight", "missing"),
    ("model.language_model.layers.0.self_attn.k_proj.bias", "mis-shaped"),
    ("rm_heads.head_1.5.bias", "missing"),
    ("rm_heads.head_0.3.weight", "mis-shaped"),
])
def test_malformed_weights_name_file_and_key(released, tmp_path, key, change):
  _, base, weights = released
  reader = CheckpointReader(os.path.dirname(weights), os.path.basename(weights))
  tensors = {k: reader.get(k) for k in reader.keys()}
  if change == "missing":
    del tensors[key]
  else:
    tensors[key] = tensors[key][..., :-1]
  bad = str(tmp_path / "broken.safetensors")
  save_file(tensors, bad)
  with pytest.raises(from_hf.CheckpointMismatchError, match=f"{change} keys") as e:
    from_hf.import_hf(base, str(tmp_path / "ckpt"), reward_weights=bad)
  assert bad in str(e.value) and key in str(e.value)


def test_pickled_weights_are_refused(released, tmp_path):
  _, base, _ = released
  pth = tmp_path / "model.pth"
  pth.write_bytes(b"\x80\x04not to be unpickled")
  with pytest.raises(ValueError, match=r"\.safetensors.*\.pth files are not loaded") as e:
    from_hf.import_hf(base, str(tmp_path / "ckpt"), reward_weights=str(pth))
  assert str(pth) in str(e.value)
