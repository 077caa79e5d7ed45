"""The training library: config validation, optimizer groups and the reward row, gradient accumulation, the
non-finite guard, FLOPs, the dry-run plan."""

from __future__ import annotations

import dataclasses

import jax
import numpy as np
import optax
import pytest

from configs import mimo7b, tiny
from data.editreward_demo import generate_rows
from editreward_jax import pipeline, sharding
from editreward_jax.evaluation import metrics as eval_metrics
from editreward_jax.models.presets import MIMO_VL_7B, TINY
from editreward_jax.reward import HeadConfig
from editreward_jax.training import flops, loop, plan
from editreward_jax.training import optimizer as opt_lib
from editreward_jax.training import state as state_lib
from editreward_jax.training.config import ConfigError, from_config

SIZE = 56


def tiny_config(**overrides):
  """configs/tiny.py at 56 px with `section__field=value` overrides."""
  c = tiny.get_config()
  c.data.min_pixels = c.data.max_pixels = SIZE * SIZE
  c.data.prefetch = 0
  for key, value in overrides.items():
    section, field = key.split("__")
    c[section][field] = value
  return c


@pytest.fixture(scope="module")
def rows():
  return [r for r in generate_rows("train", 12, seed=0, image_size=SIZE, edits_per_source=4)
          if r["vote_type"] != "tie"]


def batches(run: loop.Run, rows, pairs: int, count: int, mesh) -> list[dict]:
  cfg = dataclasses.replace(loop.pipeline_config(run.config, mesh, training=True), batch_pairs=pairs, shuffle=False,
                            prefetch=0)
  it = iter(pipeline.pair_dataset(rows, run.tokenizer, run.setup.prompts, run.setup.cfg, cfg, shard=(0, 1)))
  out = [next(it) for _ in range(count)]
  it.close()
  return out


def prepare(config, setup=None):
  mesh = sharding.make_mesh(devices=jax.devices()[:1])
  cfg = from_config(config)
  return loop.prepare(cfg, mesh, 100, setup), mesh


def run_steps(run, mesh, micro_batches_per_step, steps=1):
  state, frozen = run.initial_state()
  start = jax.tree.map(np.asarray, run.merge(state["params"], frozen))
  step_fn, shardings = run.train_step(mesh, micro_batches_per_step[0][0])
  metrics, after = [], []
  for i in range(steps):
    micro = micro_batches_per_step[i % len(micro_batches_per_step)]
    state, m = step_fn(state, frozen, loop.global_batch(micro, shardings), jax.random.key(0))
    metrics.append(jax.device_get(m))
    after.append(jax.tree.map(np.asarray, run.merge(state["params"], frozen)))
  return start, after[-1] if steps == 1 else after, metrics, state


@pytest.mark.parametrize("override, message", [
    ({"optimizer__lr": -1.0}, "config.optimizer.lr: must be > 0"),
    ({"train__embedding": "rows"}, "config.train.embedding: 'rows' is not one of"),
    ({"mesh__data": 0}, "config.mesh.data: must be a positive integer or -1"),
    ({"data__seq_buckets": (256, 128)}, "config.data.seq_buckets: must be"),
    ({"train__batch_pairs": 6, "train__grad_accumulation": 4}, "not a multiple of grad_accumulation"),
    ({"model__rope_mode": "3d"}, "config.model.rope_mode"),
])
def test_bad_config_values_name_the_field(override, message):
  with pytest.raises(ConfigError, match=message.replace(".", r"\.").replace("(", r"\(")):
    from_config(tiny_config(**override))


def test_every_experiment_config_validates():
  from configs import qwen25vl3b, qwen25vl7b
  for module in (tiny, qwen25vl3b, qwen25vl7b, mimo7b):
    config = from_config(module.get_config())
    assert config.optimizer.b1 == 0.9 and config.optimizer.clip_norm == 1.0
  real = from_config(mimo7b.get_config())
  assert (real.optimizer.lr, real.train.batch_pairs, real.train.embedding, real.runtime.dtype) == (
      2e-6, 64, "reward_row", "bfloat16")


def test_parameter_groups():
  assert opt_lib.group_of(("backbone", "visual", "merger", "fc1", "kernel")) == "merger"
  assert opt_lib.group_of(("backbone", "visual", "blocks", "attn", "qkv", "kernel")) == "vision"
  assert opt_lib.group_of(("backbone", "decoder", "norm", "scale")) == "language_model"
  assert opt_lib.group_of(("backbone", "embed_tokens")) == "embedding"
  assert opt_lib.group_of(("heads", "visual_quality", "fc0", "kernel")) == "heads"
  assert opt_lib.group_of(("backbone", "lm_head")) is None


def test_reward_row_trains_alone_and_multipliers_scale_updates(rows):
  config = tiny_config(train__embedding="reward_row", optimizer__warmup_fraction=0.0, optimizer__schedule="constant",
                       optimizer__lr=1e-3)
  config.optimizer.lr_multipliers.update(vision=0.0, merger=0.5, language_model=1.0, heads=0.25, embedding=1.0)
  run, mesh = prepare(config)
  state, _ = run.initial_state()
  # No AdamW moment is the size of the token table: only its [D] reward row trains.
  assert opt_lib.REWARD_ROW in state["params"] and "embed_tokens" not in state["params"]["backbone"]
  moments = [x.shape for x in jax.tree.leaves(state["opt_state"])]
  assert (TINY.text.vocab_size, TINY.text.hidden_size) not in moments
  assert "visual" not in state["params"]["backbone"] or "blocks" not in state["params"]["backbone"]["visual"]
  data = batches(run, rows, 2, 3, mesh)
  before, (first, _, after), _, _ = run_steps(run, mesh, [[b] for b in data], steps=3)
  changed_rows = np.flatnonzero(np.any(before["backbone"]["embed_tokens"] != after["backbone"]["embed_tokens"],
                                       axis=1))
  assert changed_rows.tolist() == [run.reward_id]
  np.testing.assert_array_equal(before["backbone"]["lm_head"], after["backbone"]["lm_head"])
  for a, b in zip(jax.tree.leaves(before["backbone"]["visual"]["blocks"]),
                  jax.tree.leaves(after["backbone"]["visual"]["blocks"])):
    np.testing.assert_array_equal(a, b)
  # AdamW's first update is lr * g / (|g| + eps): the largest move of a group is lr x its multiplier.
  moved = lambda *trees: max(float(np.abs(a - b).max()) for a, b in zip(*map(jax.tree.leaves, trees)))
  for multiplier, group in ((1.0, lambda p: p["backbone"]["decoder"]), (0.5, lambda p: p["backbone"]["visual"]["merger"]),
                            (0.25, lambda p: p["heads"])):
    assert moved(group(first), group(before)) == pytest.approx(1e-3 * multiplier, rel=1e-3)


def sgd(run, mesh):
  """The run with plain SGD at rate 1: its update is the accumulated gradient itself. (AdamW's first update is about
  lr * sign(gradient), which rounding of gradients near 0 can flip: no test of accumulation.)"""
  tx = optax.sgd(1.0)
  return dataclasses.replace(run, tx=tx, state_abstract=state_lib.abstract_train_state(
      tx, run.state_abstract["params"], mesh)), mesh


def test_gradient_accumulation_equals_one_large_batch(rows):
  config = tiny_config(train__batch_pairs=4, train__grad_accumulation=1, optimizer__warmup_fraction=0.0,
                       data__seq_buckets=(256,))
  setup = dataclasses.replace(state_lib.model_setup(from_config(config)), head=HeadConfig(dropout=0.0))
  run_one, mesh = sgd(*prepare(config, setup))
  (big,) = batches(run_one, rows, 4, 1, mesh)
  _, one, m_one, _ = run_steps(run_one, mesh, [[big]])
  config.train.batch_pairs, config.train.grad_accumulation = 4, 2
  run_two, _ = sgd(*prepare(config, setup))
  small = batches(run_two, rows, 2, 2, mesh)
  np.testing.assert_array_equal(np.concatenate([b["source_row"] for b in small]), big["source_row"])
  _, two, m_two, _ = run_steps(run_two, mesh, [small])
  assert abs(float(m_one[0]["loss"]) - float(m_two[0]["loss"])) <= 1e-6
  worst = max(float(np.abs(a - b).max()) for a, b in zip(jax.tree.leaves(one), jax.tree.leaves(two)))
  assert worst <= 1e-6


def test_non_finite_step_leaves_parameters_unchanged(rows):
  run, mesh = prepare(tiny_config(optimizer__warmup_fraction=0.0))
  (batch,) = batches(run, rows, 2, 1, mesh)
  vision = dict(batch["batch"]["vision"], pixel_table=np.full_like(batch["batch"]["vision"]["pixel_table"], np.nan))
  batch = dict(batch, batch=dict(batch["batch"], vision=vision))
  before, after, metrics, state = run_steps(run, mesh, [[batch]])
  assert not metrics[0]["finite"]
  assert int(state["step"]) == 1
  for a, b in zip(jax.tree.leaves(before), jax.tree.leaves(after)):
    np.testing.assert_array_equal(a, b)


def test_train_flops_follow_the_documented_formula():
  cfg = TINY
  t, v = cfg.text, cfg.vision
  lengths = np.array([10, 7, 0])
  dense = 2 * t.hidden_size * t.head_dim * (2 * t.num_attention_heads + 2 * t.num_key_value_heads) + \
      2 * 3 * t.hidden_size * t.intermediate_size
  want = t.num_hidden_layers * (dense * 17 + 2 * (100 + 49) * t.num_attention_heads * t.head_dim)
  assert flops.decoder_flops(cfg, lengths) == pytest.approx(want)
  head = HeadConfig()
  per_head = t.hidden_size * 1024 + 1024 * 16 + 16 * 2
  batch = {"batch": {"lengths": lengths, "vision": None}}
  assert flops.forward_flops(cfg, head, batch) == pytest.approx(want + 2 * per_head * 2 * 2)
  assert flops.train_flops(cfg, head, batch) == pytest.approx(3 * flops.forward_flops(cfg, head, batch))
  # Prefix sharing: the dense layers run on the 12 packed tokens, attention still on the rows of 10 and 7.
  packed = {"batch": {"lengths": lengths, "vision": None, "token_rows": np.array([[0, 1, 2] + list(range(4, 13)) +
                                                                                    [-1] * 4])}}
  want_packed = want - t.num_hidden_layers * dense * (17 - 12)
  assert flops.forward_flops(cfg, head, packed) == pytest.approx(want_packed + 2 * per_head * 2 * 2)
  # Vision: one image of 16 patches in one window; full and window blocks then cost the same attention.
  c = v.hidden_size
  one_block = 2 * (4 * c * c + 3 * c * v.intermediate_size) * 16 + 4 * c * 16**2
  merger = 2 * ((4 * c)**2 + 4 * c * v.out_hidden_size) * 4
  assert flops.vision_flops(cfg, np.array([16, 0]), np.array([16])) == pytest.approx(
      2 * v.patch_dim * c * 16 + v.depth * one_block + merger)


def test_accuracy_with_ties_picks_the_best_threshold():
  delta = np.array([2.0, 0.1, -0.05, 1.0, -3.0])
  labels = np.array([1, 0, 0, 1, 1])
  assert eval_metrics.pairwise_accuracy(delta, labels) == pytest.approx(2 / 3)
  accuracy, eps = eval_metrics.accuracy_with_ties(delta, labels)
  assert accuracy == pytest.approx(4 / 5) and eps == pytest.approx(0.1)


def test_dry_run_mimo7b_fsdp8_matches_a_hand_count():
  config = mimo7b.get_config()
  config.mesh.fsdp = 8
  report = plan.dry_run(config)
  assert report["mesh"] == {"data": 1, "fsdp": 8, "tensor": 1} and report["devices"] == 8
  t, v = MIMO_VL_7B.text, MIMO_VL_7B.vision
  d, hd, c, f = t.hidden_size, t.head_dim, v.hidden_size, v.intermediate_size
  # Split 8 ways over fsdp: every matrix with a model-width (embed) dimension, and the vision biases of width c.
  layer_split = d * hd * (t.num_attention_heads * 2 + t.num_key_value_heads * 2) + 3 * d * t.intermediate_size
  layer_kept = hd * (t.num_attention_heads + 2 * t.num_key_value_heads) + 2 * d  # q/k/v biases, two norms
  block_split = 4 * c * c + 3 * c * f + 2 * c  # qkv, proj, MLP kernels; proj and down biases
  block_kept = 3 * c + 2 * f + 2 * c  # qkv bias, gate/up biases, two norms
  merger_split = (4 * c) ** 2 + 4 * c * d + d
  merger_kept = c + 4 * c
  heads = 2 * (d * 1024 + 1024 + 1024 * 16 + 16 + 16 * 2 + 2)
  split = t.num_hidden_layers * layer_split + v.depth * block_split + merger_split + v.patch_dim * c
  kept = t.num_hidden_layers * layer_kept + d + v.depth * block_kept + merger_kept + heads + d  # + reward row
  assert report["trainable"] == split + kept
  assert report["frozen"] == 2 * t.vocab_size * d  # embedding table and lm_head
  b = report["per_device_bytes"]
  assert b["trainable_params"] == 4 * (split // 8 + kept)
  assert b["gradients"] == b["trainable_params"]
  assert b["frozen_params"] == 4 * 2 * t.vocab_size * d // 8
  assert 0 <= b["optimizer_state"] - 2 * b["trainable_params"] < 1024  # two moments, plus step counts
