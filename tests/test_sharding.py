"""Sharding: the logical-axis table, mesh construction, and an 8-device forward equal to one device."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import jax
import pytest
from jax.sharding import PartitionSpec

from editreward_jax import sharding


def test_logical_rules_map_to_mesh_axes():
  assert sharding.logical_to_spec(("layers", "embed", "mlp")) == PartitionSpec(None, "fsdp", "tensor")
  assert sharding.logical_to_spec(("batch", "seq")) == PartitionSpec(("data", "fsdp"), None)
  with pytest.raises(KeyError, match="no sharding rule"):
    sharding.logical_to_spec(("nonsense",))
  with pytest.raises(ValueError, match="twice"):
    sharding.logical_to_spec(("mlp", "vocab"))


def test_mesh_sizes_are_checked():
  with pytest.raises(ValueError, match="needs 4 devices"):
    sharding.make_mesh(data=2, fsdp=2, tensor=1, devices=jax.devices()[:1])
  mesh = sharding.make_mesh(devices=jax.devices()[:1])
  assert dict(mesh.shape) == {"data": 1, "fsdp": 1, "tensor": 1}


@pytest.mark.slow
@pytest.mark.torch
def test_eight_device_mesh_matches_one_device(tiny_hf_dir):
  here = os.path.dirname(__file__)
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu",
             PYTHONPATH=os.pathsep.join([here, os.path.dirname(here), os.environ.get("PYTHONPATH", "")]))
  run = subprocess.run([sys.executable, os.path.join(here, "multidevice_forward.py"), tiny_hf_dir], env=env,
                       capture_output=True, text=True, timeout=600)
  assert run.returncode == 0, run.stderr[-3000:]
  report = json.loads(run.stdout.strip().splitlines()[-1])
  assert report["devices"] == 8
  assert report["max_abs_diff"] <= 1e-5, report
  assert report["scale"] > 0.5
  # [layers, embed, mlp] -> (None, fsdp, tensor): each device holds half the rows and half the columns.
  assert report["gate_spec"] == ["None", "fsdp", "tensor"]
  layers, d, f = report["gate_shape"]
  assert report["gate_shard_shapes"] == [[layers, d // 2, f // 2]]
  assert report["embed_spec"] == ["tensor", "fsdp"]
