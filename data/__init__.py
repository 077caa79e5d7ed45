"""Data sets of editreward-jax: TFDS builders (ArrayRecord, no TensorFlow) and JSON readers.

  data.build("editreward_demo", data_dir)                     # the synthetic default set, offline
  data.build("editreward_data", data_dir, manual_dir=...)     # from the local parquet release
  rows = data.open_source("editreward_demo", "train", data_dir)  # random access, plain-Python rows, for Grain
  rows = data.PairJsonSource("pairs.json")                     # the reference trainer's JSON, same row schema
  reqs = data.ScoringSource("edits.jsonl")                     # rows to score
"""

from data.editreward_demo import DemoConfig, demo_config
from data.readers import PairJsonSource, ScoringSource
from data.schema import DataError
from data.sources import BUILDERS, RowSource, build, open_source, open_splits, prepared_dir

__all__ = ["BUILDERS", "DataError", "DemoConfig", "PairJsonSource", "RowSource", "ScoringSource", "build",
           "demo_config", "open_source", "open_splits", "prepared_dir"]
