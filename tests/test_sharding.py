"""Sharding: the logical-axis table, mesh construction, and an 8-device forward equal to one device."""

from __future__ import annotations

import logging

import jax
import pytest
from jax.sharding import AbstractMesh, AxisType, PartitionSpec

from editreward_jax import model_dir, sharding
from editreward_jax.models.presets import TINY
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
  # tensor=4 over 4 query heads and 2 KV heads: one query head per device, every KV head on every device.
  assert report["tp4_max_abs_diff"] <= 1e-5, report
  assert report["tp4_q_shard_shapes"] == [[layers, d // 2, 1, 16]]
  assert report["tp4_k_shard_shapes"] == [[layers, d // 2, 2, 16]]


def _abstract_params(tensor: int):
  mesh = AbstractMesh((1, 2, tensor), sharding.MESH_AXES, axis_types=(AxisType.Auto,) * 3)
  _, state, params = model_dir.abstract_params(TINY, mesh=mesh)
  return state, params, mesh


def test_tensor_parallelism_splits_whole_heads():
  # TINY: 4 query heads and 2 KV heads of 32 dims in the decoder, 4 heads of 16 in the vision tower.
  state, params, mesh = _abstract_params(tensor=4)
  attn, vis = params["backbone"]["decoder"]["layers"]["self_attn"], params["backbone"]["visual"]["blocks"]["attn"]
  assert attn["q_proj"]["kernel"].shape == (4, 128, 4, 32)
  assert attn["q_proj"]["kernel"].sharding.spec == PartitionSpec(None, "fsdp", "tensor", None)
  assert attn["q_proj"]["bias"].sharding.spec == PartitionSpec(None, "tensor", None)
  assert attn["o_proj"]["kernel"].sharding.spec == PartitionSpec(None, "tensor", None, "fsdp")
  # The fused vision projection: q, k and v on their own axis, so each device holds the same heads of all three.
  assert vis["qkv"]["kernel"].shape == (4, 64, 3, 4, 16)
  assert vis["qkv"]["kernel"].sharding.spec == PartitionSpec(None, "fsdp", None, "tensor", None)
  assert vis["proj"]["kernel"].sharding.spec == PartitionSpec(None, "tensor", None, "fsdp")
  # 2 KV heads over tensor=4: KV is replicated over the tensor axis (never split mid-head), and that is said.
  assert attn["k_proj"]["kernel"].sharding.spec == PartitionSpec(None, "fsdp", None, None)
  lines = sharding.unsplit_dims(state, mesh)
  assert any(line.startswith("logical axis 'kv_heads' of size 2 cannot be split over tensor=4") and
             "k_proj/kernel" in line for line in lines), lines

  state, params, mesh = _abstract_params(tensor=2)
  attn = params["backbone"]["decoder"]["layers"]["self_attn"]
  assert attn["k_proj"]["kernel"].sharding.spec == PartitionSpec(None, "fsdp", "tensor", None)
  assert not any("kv_heads" in line for line in sharding.unsplit_dims(state, mesh))


def test_a_rule_that_cannot_apply_is_logged(caplog):
  with caplog.at_level(logging.WARNING):
    _abstract_params(tensor=8)  # 4 query heads over 8: nothing to split
  assert any("logical axis 'q_heads' of size 4 cannot be split over tensor=8" in r.getMessage()
             for r in caplog.records), caplog.text
