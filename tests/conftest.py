"""Shared fixtures: a tiny transformers model, the same model imported into a project model directory."""

from __future__ import annotations

import os
import shutil
import sys
import tempfile

import pytest

sys.path.insert(0, os.path.dirname(__file__))

# One persistent compilation cache for the session and the commands its tests start (they inherit the environment):
# the tiny models' programs are compiled once, not once per test process. Set before any test imports JAX.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
  _CACHE = tempfile.mkdtemp(prefix="editreward-jax-test-cache-")
  os.environ.update(JAX_COMPILATION_CACHE_DIR=_CACHE, JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0.2")

  def pytest_unconfigure(config):
    shutil.rmtree(_CACHE, ignore_errors=True)


@pytest.fixture(scope="session")
def tiny_torch():
  pytest.importorskip("torch")  # the fixtures below build on this one, so their tests skip too
  from torch_reference import tiny_torch_model
  return tiny_torch_model(seed=0)


@pytest.fixture(scope="session")
def tiny_hf_dir(tiny_torch, tmp_path_factory):
  path = tmp_path_factory.mktemp("hf_tiny")
  tiny_torch.save_pretrained(path)
  return str(path)


@pytest.fixture(scope="session")
def tiny_ckpt(tiny_hf_dir, tmp_path_factory):
  from convert.from_hf import import_hf
  out = str(tmp_path_factory.mktemp("ckpt_tiny"))
  return import_hf(tiny_hf_dir, out, param_dtype="float32")


@pytest.fixture(scope="session")
def tiny_jax(tiny_ckpt):
  from editreward_jax.model_dir import load_model
  model, _ = load_model(tiny_ckpt)
  return model.backbone


@pytest.fixture(scope="session")
def reward_dir(tmp_path_factory):
  """A tiny random reward model directory with the bundled tokenizer (JAX only); tests read it, never change it."""
  from tiny_reward import make_reward_dir
  return make_reward_dir(tmp_path_factory.mktemp("reward_tiny"))
