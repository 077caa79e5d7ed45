"""Data sets of editreward-jax: TFDS builders (ArrayRecord, no TensorFlow) and JSON readers.

  data.build("editreward_demo", data_dir)                     # the synthetic default set, offline
  data.build("editreward_data", data_dir, manual_dir=...)     # from the local parquet release
  rows = data.open_source("editreward_demo", "train", data_dir)  # random access, plain-Python rows, for Grain
  rows = data.PairJsonSource("pairs.json")                     # the reference trainer's JSON, same row schema
  reqs = data.ScoringSource("edits.jsonl")                     # rows to score
"""

import os

from data.editreward_demo import DemoConfig, demo_config
from data.readers import PairJsonSource, ScoringSource, read_pair_set, read_pointwise
from data.schema import DataError
from data.sources import BUILDERS, RowSource, build, open_source, open_splits, prepared_dir

TINY_TOKENIZER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "tiny_tokenizer")  # bundled, 1024 tokens

__all__ = ["BUILDERS", "DataError", "DemoConfig", "PairJsonSource", "RowSource", "ScoringSource", "TINY_TOKENIZER",
           "build", "demo_config", "open_source", "open_splits", "prepared_dir", "read_pair_set", "read_pointwise"]
