"""Sharding: the logical-axis table, mesh construction, and an 8-device forward equal to one device."""

from __future__ import annotations

import jax
import pytest
from jax.sharding import PartitionSpec

from editreward_jax import sharding
from subprocess_run import run_report


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
  report = run_report("multidevice_forward.py", tiny_hf_dir, devices=8)
  assert report["devices"] == 8
  assert report["max_abs_diff"] <= 1e-5, report
  assert report["scale"] > 0.5
  # [layers, embed, mlp] -> (None, fsdp, tensor): each device holds half the rows and half the columns.
  assert report["gate_spec"] == ["None", "fsdp", "tensor"]
  layers, d, f = report["gate_shape"]
  assert report["gate_shard_shapes"] == [[layers, d // 2, f // 2]]
  assert report["embed_spec"] == ["tensor", "fsdp"]
