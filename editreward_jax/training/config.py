"""The training configuration: one validated dataclass per section of an experiment's ml_collections config.

An experiment config (configs/*.py) has the sections model, data, optimizer, train, runtime and mesh. `from_config`
builds each section's dataclass once; every check lives here and fails with a `ConfigError` naming the field, e.g.
`config.optimizer.lr: must be > 0, got -1.0`. Enumerated settings are StrEnums made from the tuples their modules
define, so the names the model, loss and pipeline accept and the names a config may spell are one list.
"""

from __future__ import annotations

import dataclasses
import enum
from typing import Any, Mapping

from editreward_jax import pairs, paths, row_checks
from editreward_jax.losses import LOSS_KINDS
from editreward_jax.models.attention import IMPLEMENTATIONS
from editreward_jax.models.positions import ROPE_MODES
from editreward_jax.models.scan import REMAT_POLICIES
from editreward_jax.processing import check_pixel_bounds
from editreward_jax.reward import FUSIONS


def _enum(name: str, values) -> type[enum.StrEnum]:
  return enum.StrEnum(name, {v.upper(): v for v in values})


RopeMode = _enum("RopeMode", ROPE_MODES)
Fusion = _enum("Fusion", FUSIONS)
LossKind = _enum("LossKind", LOSS_KINDS)
TiePolicy = _enum("TiePolicy", pairs.TIE_POLICIES)
BadRows = _enum("BadRows", row_checks.BAD_ROW_POLICIES)
Remat = _enum("Remat", REMAT_POLICIES)
Attention = _enum("Attention", IMPLEMENTATIONS)
Objective = _enum("Objective", ("fused", "multi_dimensional"))  # the reference's fused loss, or + per-dimension terms
Embedding = _enum("Embedding", ("reward_row", "all", "frozen"))  # which rows of the token embedding train
NonFinite = _enum("NonFinite", ("stop", "skip"))                   # what a non-finite loss or gradient does
Schedule = _enum("Schedule", ("constant", "cosine"))               # after the linear warmup
DType = _enum("DType", ("float32", "bfloat16"))

# Parameter groups of the reward model, each with its own learning-rate multiplier (0 freezes it).
GROUPS = ("vision", "merger", "language_model", "heads", "embedding")


class ConfigError(ValueError):
  """A bad config value; the message names the field (config.section.name)."""


def _fail(section: str, name: str, problem: str):
  raise ConfigError(f"config.{section}.{name}: {problem}")


def _check_enum(section: str, name: str, value: Any, cls: type[enum.StrEnum]) -> enum.StrEnum:
  try:
    return cls(value)
  except ValueError:
    _fail(section, name, f"{value!r} is not one of {[m.value for m in cls]}")


def _positive(section: str, name: str, value: Any, *, allow_zero: bool = False) -> None:
  if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0 or (value == 0 and not allow_zero):
    _fail(section, name, f"must be {'>= 0' if allow_zero else '> 0'}, got {value!r}")


def _increasing(section: str, name: str, values: tuple[int, ...], *, required: bool) -> tuple[int, ...]:
  values = tuple(int(v) for v in values)
  if (required and not values) or any(v < 1 for v in values) or list(values) != sorted(set(values)):
    _fail(section, name, f"must be {'a non-empty list of ' if required else ''}positive, strictly increasing "
          f"sizes, got {values}")
  return values


@dataclasses.dataclass(frozen=True)
class ModelSection:
  preset: str          # shapes from configs/presets.py when no base is given (a fresh model, e.g. tiny)
  base: str            # a project model directory (convert.from_hf output) to start from; its config wins
  tokenizer: str       # tokenizer directory; "" = the base's
  rope_mode: RopeMode
  fusion: Fusion

  def validate(self) -> ModelSection:
    if not self.base and not self.preset:
      _fail("model", "base", "either model.base (a model directory) or model.preset must be set")
    if not self.base and not self.tokenizer:
      _fail("model", "tokenizer", "a model built from a preset needs a tokenizer directory")
    return self


@dataclasses.dataclass(frozen=True)
class DataSection:
  name: str                    # dataset name (data.BUILDERS: editreward_data, editreward_demo, ...)
  data_dir: str                # TFDS data_dir; "" = <workdir>/tfds (where the demo set is built when missing)
  train_split: str
  eval_split: str              # "" = no held-out evaluation
  tie_policy: TiePolicy
  tie_weight: float
  bad_rows: BadRows
  seq_buckets: tuple[int, ...]
  patch_buckets: tuple[int, ...]
  packed_buckets: tuple[int, ...]
  min_pixels: int
  max_pixels: int
  prompts_file: str            # "" = the rubric the base model records, else the project's default
  workers: int
  read_threads: int
  prefetch: int
  eval_max_pairs: int          # 0 = the whole held-out split
  demo: Mapping[str, int]      # editreward_demo settings (data.demo_config keyword arguments)

  def validate(self) -> DataSection:
    if not self.name:
      _fail("data", "name", "a dataset name is required")
    if not self.train_split:
      _fail("data", "train_split", "a split name is required")
    _positive("data", "tie_weight", self.tie_weight, allow_zero=True)
    try:
      check_pixel_bounds(self.min_pixels, self.max_pixels)
    except ValueError as e:
      _fail("data", "min_pixels", str(e))
    for name in ("workers", "read_threads", "prefetch", "eval_max_pairs"):
      _positive("data", name, getattr(self, name), allow_zero=True)
    return self


@dataclasses.dataclass(frozen=True)
class OptimizerSection:
  lr: float
  b1: float
  b2: float
  eps: float
  weight_decay: float
  clip_norm: float             # global-norm clipping of the whole gradient; 0 = off
  warmup_fraction: float       # linear warmup over this fraction of the steps
  schedule: Schedule
  lr_multipliers: Mapping[str, float]  # per group (GROUPS); 0 freezes the group

  def validate(self) -> OptimizerSection:
    _positive("optimizer", "lr", self.lr)
    for name in ("b1", "b2"):
      if not 0 <= getattr(self, name) < 1:
        _fail("optimizer", name, f"must be in [0, 1), got {getattr(self, name)!r}")
    _positive("optimizer", "eps", self.eps)
    for name in ("weight_decay", "clip_norm"):
      _positive("optimizer", name, getattr(self, name), allow_zero=True)
    if not 0 <= self.warmup_fraction < 1:
      _fail("optimizer", "warmup_fraction", f"must be in [0, 1), got {self.warmup_fraction!r}")
    unknown = sorted(set(self.lr_multipliers) - set(GROUPS))
    missing = sorted(set(GROUPS) - set(self.lr_multipliers))
    if unknown or missing:
      _fail("optimizer", "lr_multipliers", f"needs exactly the groups {list(GROUPS)}; unknown {unknown}, "
            f"missing {missing}")
    for group, m in self.lr_multipliers.items():
      _positive("optimizer", f"lr_multipliers.{group}", m, allow_zero=True)
    return self


@dataclasses.dataclass(frozen=True)
class TrainSection:
  steps: int                   # optimizer steps; with epochs > 0 this is derived from the data instead
  epochs: float                # 0 = use steps
  batch_pairs: int             # pairs per optimizer step, over all processes and micro-batches
  grad_accumulation: int       # micro-batches per step
  log_every: int
  eval_every: int              # 0 = only at the end
  checkpoint_every: int
  keep_checkpoints: int
  seed: int
  embedding: Embedding
  objective: Objective
  loss_kind: LossKind
  dimension_weight: float      # weight of each head's own-label term (objective multi_dimensional)
  nonfinite: NonFinite

  def validate(self) -> TrainSection:
    for name in ("batch_pairs", "grad_accumulation", "log_every", "checkpoint_every", "keep_checkpoints"):
      if not isinstance(getattr(self, name), int):
        _fail("train", name, f"must be an integer, got {getattr(self, name)!r}")
      _positive("train", name, getattr(self, name))
    _positive("train", "steps", self.steps, allow_zero=self.epochs > 0)
    _positive("train", "epochs", self.epochs, allow_zero=True)
    _positive("train", "eval_every", self.eval_every, allow_zero=True)
    if self.batch_pairs % self.grad_accumulation:
      _fail("train", "batch_pairs", f"{self.batch_pairs} is not a multiple of grad_accumulation "
            f"{self.grad_accumulation}")
    _positive("train", "dimension_weight", self.dimension_weight, allow_zero=True)
    return self

  @property
  def micro_pairs(self) -> int:
    return self.batch_pairs // self.grad_accumulation


@dataclasses.dataclass(frozen=True)
class RuntimeSection:
  dtype: DType                 # compute
  param_dtype: DType           # master weights
  remat: Remat
  attention: Attention
  prefix_sharing: bool         # each pair's common prefixes through the decoder once (exact; False: 4 full rows)
  peak_tflops: float           # per-device peak for MFU; 0 = not reported

  def validate(self) -> RuntimeSection:
    _positive("runtime", "peak_tflops", self.peak_tflops, allow_zero=True)
    return self


@dataclasses.dataclass(frozen=True)
class MeshSection:
  data: int
  fsdp: int
  tensor: int

  def validate(self) -> MeshSection:
    sizes = (self.data, self.fsdp, self.tensor)
    if sizes.count(-1) > 1:
      _fail("mesh", "fsdp", f"at most one axis may be -1 (fill), got data={self.data} fsdp={self.fsdp} "
            f"tensor={self.tensor}")
    for name, size in zip(("data", "fsdp", "tensor"), sizes):
      if not isinstance(size, int) or (size < 1 and size != -1):
        _fail("mesh", name, f"must be a positive integer or -1, got {size!r}")
    return self


@dataclasses.dataclass(frozen=True)
class TrainConfig:
  model: ModelSection
  data: DataSection
  optimizer: OptimizerSection
  train: TrainSection
  runtime: RuntimeSection
  mesh: MeshSection


_SECTIONS = {"model": ModelSection, "data": DataSection, "optimizer": OptimizerSection, "train": TrainSection,
             "runtime": RuntimeSection, "mesh": MeshSection}
_PATHS = {("model", "base"), ("model", "tokenizer"), ("data", "data_dir"), ("data", "prompts_file")}
_TUPLES = {("data", "seq_buckets"), ("data", "patch_buckets"), ("data", "packed_buckets")}


def _section(name: str, cls, values: Mapping[str, Any]):
  fields = {f.name for f in dataclasses.fields(cls)}
  unknown, missing = sorted(set(values) - fields), sorted(fields - set(values))
  if unknown:
    _fail(name, unknown[0], f"unknown field (known: {sorted(fields)})")
  if missing:
    _fail(name, missing[0], "missing")
  kwargs = {}
  for field in fields:
    value = values[field]
    if hasattr(value, "to_dict"):
      value = value.to_dict()
    if (name, field) in _PATHS:
      value = paths.expand(value)
    if (name, field) in _TUPLES:
      value = _increasing(name, field, tuple(value), required=field == "seq_buckets")
    if field in _ENUM_FIELDS:
      value = _check_enum(name, field, value, _ENUM_FIELDS[field])
    kwargs[field] = value
  return cls(**kwargs).validate()


def from_config(config: Mapping[str, Any]) -> TrainConfig:
  """The validated sections of an experiment config (a ConfigDict or nested dict)."""
  config = config.to_dict() if hasattr(config, "to_dict") else dict(config)
  unknown = sorted(set(config) - set(_SECTIONS))
  if unknown:
    raise ConfigError(f"config.{unknown[0]}: unknown section (known: {sorted(_SECTIONS)})")
  for name in _SECTIONS:
    if name not in config:
      raise ConfigError(f"config.{name}: missing section")
  return TrainConfig(**{name: _section(name, cls, config[name]) for name, cls in _SECTIONS.items()})


_ENUM_FIELDS = {"rope_mode": RopeMode, "fusion": Fusion, "tie_policy": TiePolicy, "bad_rows": BadRows,
                "schedule": Schedule, "embedding": Embedding, "objective": Objective, "loss_kind": LossKind,
                "nonfinite": NonFinite, "dtype": DType, "param_dtype": DType, "remat": Remat,
                "attention": Attention}
