"""Every Python snippet of the README runs as written, in a folder holding tiny stand-ins for the files it names."""

from __future__ import annotations

import os
import re
import shutil

import numpy as np
import PIL.Image
import pytest

import data
from tiny_reward import make_reward_dir

pytest.importorskip("torch")  # the import and export snippets need PyTorch stand-ins
from convert import to_torch

pytestmark = pytest.mark.torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
  SNIPPETS = re.findall(r"```python\n(.*?)```", f.read(), re.S)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, tiny_hf_dir):
  root = tmp_path_factory.mktemp("readme")
  ckpt = make_reward_dir(root / "ckpt" / "editreward-mimo")
  to_torch.export_torch(ckpt, str(root / "export" / "editreward-mimo"))
  shutil.copytree(tiny_hf_dir, root / "Qwen2.5-VL-7B-Instruct")  # a tiny transformers Qwen2.5-VL directory
  rng = np.random.default_rng(0)
  for name in ("source.png", "edited.png"):
    PIL.Image.fromarray(rng.integers(0, 255, (80, 96, 3), dtype=np.uint8)).save(root / name)
  data.build("editreward_demo", root / "home" / "tfds", config=data.demo_config(num_train_pairs=8, num_test_pairs=4))
  return root


def test_the_readme_has_snippets():
  assert len(SNIPPETS) >= 4  # scoring, import + backbone, PyTorch scorer, pipeline


@pytest.mark.parametrize("index", range(len(SNIPPETS)), ids=lambda i: SNIPPETS[i].splitlines()[0][:40])
def test_snippet_runs_as_written(index, workspace, monkeypatch):
  monkeypatch.chdir(workspace)
  monkeypatch.setenv("HOME", str(workspace / "home"))  # the pipeline snippet reads "~/tfds"
  exec(compile(SNIPPETS[index], f"README.md python snippet {index}", "exec"), {"__name__": "readme_snippet"})
