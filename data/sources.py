"""Build the project's data sets into a data_dir and open their splits as random-access sources.

TFDS writes ArrayRecord files and reads them back through `as_data_source`, both without TensorFlow (TFDS only
imports TensorFlow when a `tf.data` pipeline is asked for, which this project never does).
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import logging
import os
import pathlib

import tensorflow_datasets as tfds
from absl import logging as absl_logging

from data.editreward_bench import EditrewardBench
from data.editreward_data import EditrewardData
from data.editreward_demo import EditrewardDemo
from data.schema import DataError
from editreward_jax import paths

BUILDERS: dict[str, type[tfds.core.GeneratorBasedBuilder]] = {
    "editreward_data": EditrewardData,
    "editreward_bench": EditrewardBench,
    "editreward_demo": EditrewardDemo,
}
# Datasets read from files that the user provides; the demo set needs none.
NEEDS_MANUAL_DIR = ("editreward_data", "editreward_bench")


def _builder_class(name: str) -> type[tfds.core.GeneratorBasedBuilder]:
  if name not in BUILDERS:
    raise DataError(f"unknown dataset {name!r}; expected one of {sorted(BUILDERS)}")
  return BUILDERS[name]


def _config_arg(cls: type[tfds.core.GeneratorBasedBuilder], config: tfds.core.BuilderConfig | str | None
                ) -> tfds.core.BuilderConfig | str | None:
  """TFDS takes a registered config by name only; an equal config object is turned into its name."""
  registered = {c.name: c for c in cls.BUILDER_CONFIGS}
  if not isinstance(config, tfds.core.BuilderConfig) or config.name not in registered:
    return config
  if dataclasses.asdict(config) != dataclasses.asdict(registered[config.name]):
    raise DataError(f"config {config} differs from the built-in config of the same name {config.name!r}")
  return config.name


def build(name: str, data_dir: str | os.PathLike, *, manual_dir: str | os.PathLike | None = None,
          config: tfds.core.BuilderConfig | str | None = None) -> tfds.core.GeneratorBasedBuilder:
  """Prepares dataset `name` under `data_dir` (a no-op when already prepared) and returns its builder.

  `manual_dir` holds the parquet files of editreward_data / editreward_bench; `config` selects a variant, e.g.
  `data.demo_config(num_train_pairs=...)` for the demo set.
  """
  cls = _builder_class(name)
  data_dir, manual_dir = paths.expand(os.fspath(data_dir)), paths.expand(manual_dir and os.fspath(manual_dir))
  if name in NEEDS_MANUAL_DIR:
    if manual_dir is None or not pathlib.Path(manual_dir).is_dir():
      raise DataError(f"{name} is built from local parquet files: manual_dir must be their folder, got {manual_dir!r}")
  with _tfds_chatter_hidden():
    builder = cls(data_dir=os.fspath(data_dir), config=_config_arg(cls, config))
    download_config = tfds.download.DownloadConfig(manual_dir=None if manual_dir is None else os.fspath(manual_dir))
    builder.download_and_prepare(file_format="array_record", download_config=download_config)
  return builder


@contextlib.contextmanager
def _tfds_chatter_hidden():
  """Unless absl INFO logs are on (--verbose): TFDS prints its download and generated sizes and a done line to
  stdout, and warns that a config object is custom (the demo's always are); the commands print their own lines."""
  if absl_logging.level_info():
    yield
    return
  custom_config = _DropMessages(("Using custom data configuration",))
  absl_logging.get_absl_logger().addFilter(custom_config)
  printed = io.StringIO()
  try:
    with contextlib.redirect_stdout(printed):
      yield
  except BaseException:
    print(printed.getvalue(), end="")  # what TFDS said before a failure can explain it
    raise
  finally:
    absl_logging.get_absl_logger().removeFilter(custom_config)


class _DropMessages(logging.Filter):
  def __init__(self, prefixes: tuple[str, ...]):
    super().__init__()
    self.prefixes = prefixes

  def filter(self, record: logging.LogRecord) -> bool:
    return not str(record.msg).startswith(self.prefixes)


def _python_plan(feature: tfds.features.FeatureConnector) -> object:
  """How to turn what TFDS decodes for `feature` into plain Python: a nested plan of 'text' / 'value' leaves."""
  if isinstance(feature, tfds.features.FeaturesDict):
    return {key: _python_plan(sub) for key, sub in feature.items()}
  if isinstance(feature, tfds.features.Sequence):
    return [_python_plan(feature.feature)]
  if isinstance(feature, tfds.features.Text):
    return "text"
  return "value"


def _to_python(value: object, plan: object) -> object:
  if isinstance(plan, dict):
    return {key: _to_python(value[key], sub) for key, sub in plan.items()}
  if isinstance(plan, list):
    (sub,) = plan
    if isinstance(sub, dict):  # TFDS gives a sequence of dicts as a dict of lists
      count = len(next(iter(value.values()))) if value else 0
      return [_to_python({key: column[i] for key, column in value.items()}, sub) for i in range(count)]
    return [_to_python(v, sub) for v in value]
  if plan == "text":
    return value.decode("utf-8")
  return value.item() if hasattr(value, "item") else value


class RowSource:
  """A random-access source of plain-Python rows (str, int, float, bytes, lists, dicts) for Grain.

  Picklable, so Grain worker processes can open it.
  """

  def __init__(self, source, features: tfds.features.FeaturesDict, description: str):
    self._source = source
    self._plan = _python_plan(features)
    self._description = description

  def __len__(self) -> int:
    return len(self._source)

  def __getitem__(self, index: int) -> dict:
    if not 0 <= index < len(self):  # also ends plain iteration, which ArrayRecord would answer with a ValueError
      raise IndexError(f"row {index} is outside {self!r}")
    return _to_python(self._source[index], self._plan)

  def __repr__(self) -> str:
    return f"RowSource({self._description}, {len(self)} rows)"


def prepared_dir(name: str, data_dir: str | os.PathLike, config: tfds.core.BuilderConfig | str | None = None
                 ) -> pathlib.Path:
  """Where `build` put dataset `name` at the builder's current version. Without `config`: the builder's first
  config, or else the one config prepared there (a non-default demo build); several are an error naming them."""
  cls = _builder_class(name)
  data_dir = paths.expand(os.fspath(data_dir))
  config_name = config.name if isinstance(config, tfds.core.BuilderConfig) else config
  version = str(cls.VERSION)
  if config_name is None and cls.BUILDER_CONFIGS:
    config_name = cls.BUILDER_CONFIGS[0].name
    prepared = sorted(p.parent.parent.name for p in pathlib.Path(data_dir, name).glob(f"*/{version}/dataset_info.json"))
    if config_name not in prepared and len(prepared) == 1:
      config_name = prepared[0]
    elif config_name not in prepared and prepared:
      raise DataError(f"{pathlib.Path(data_dir, name)}: the default config {config_name!r} is not prepared; "
                      f"prepared configs are {prepared}: pass config=NAME")
  path = pathlib.Path(data_dir, name, *([config_name] if config_name else []), version)
  if not (path / "dataset_info.json").is_file():
    raise DataError(f"{path}: not prepared; build it first (python -m data.build --dataset={name} ...)")
  return path


def open_source(name: str, split: str, data_dir: str | os.PathLike, *,
                config: tfds.core.BuilderConfig | str | None = None) -> RowSource:
  """Split `split` of dataset `name` as prepared by `build` in `data_dir`; `config` is a config or its name (see
  `prepared_dir` for the default)."""
  path = prepared_dir(name, data_dir, config)
  builder = tfds.builder_from_directory(os.fspath(path))
  splits = builder.info.splits
  if split not in splits:
    raise DataError(f"{path}: no split {split!r}; it has {sorted(splits)}")
  return RowSource(builder.as_data_source(split=split), builder.info.features, f"{path}[{split}]")


def open_splits(name: str, data_dir: str | os.PathLike, splits: list[str], *,
                demo: dict | None = None) -> list[RowSource]:
  """The named splits of dataset `name` in `data_dir`, for training and evaluation.

  The demo set is built first when it is missing (with `demo`, a `demo_config` keyword dict); any other dataset
  must have been prepared with `python -m data.build`, else the DataError says how.
  """
  config = None
  data_dir = paths.expand(os.fspath(data_dir))
  if name == "editreward_demo":
    from data.editreward_demo import demo_config  # deferred: the demo's drawing code is only needed here
    config = demo_config(**(demo or {}))
    try:
      prepared_dir(name, data_dir, config)
    except DataError:
      print(f"building the demo set into {data_dir} (first run only)", flush=True)
      tfds.disable_progress_bar()
      build(name, data_dir, config=config)
  else:
    _builder_class(name)
    try:
      prepared_dir(name, data_dir)
    except DataError:
      raise DataError(f"dataset {name!r} is not prepared in {data_dir}: prepare it with python -m data.build "
                      f"--dataset={name} --manual_dir=PARQUET_DIR --data_dir={data_dir}") from None
  return [open_source(name, split, data_dir, config=config) for split in splits]
