"""Builds one of the project's data sets into a TFDS data_dir (ArrayRecord files, no TensorFlow needed).

  python -m data.build --dataset=editreward_demo --data_dir=/tmp/tfds
  python -m data.build --dataset=editreward_data --manual_dir=/path/to/EditReward-Data --data_dir=/tmp/tfds
  python -m data.build --dataset=editreward_bench --manual_dir=/path/to/EditReward-Bench --data_dir=/tmp/tfds
"""

from __future__ import annotations

import os
import sys
import time

import tensorflow_datasets as tfds
from absl import app, flags

from data.editreward_demo import MIN_IMAGE_SIZE, demo_config
from data.schema import DataError
from data.sources import BUILDERS, build
from editreward_jax import cli, paths

_DATASET = flags.DEFINE_enum("dataset", "editreward_demo", sorted(BUILDERS), "Data set to build.")
_DATA_DIR = flags.DEFINE_string("data_dir", None, "TFDS data directory to write into.", required=True)
_MANUAL_DIR = flags.DEFINE_string(
    "manual_dir", None, "Folder with the local parquet files (editreward_data: the train-*.parquet shards, searched "
    "recursively; editreward_bench: the 2pair/, 3pair/, 4pair/ folders).")
_SEED = flags.DEFINE_integer("seed", 0, "editreward_demo: random seed; the same seed gives byte-identical data.",
                             lower_bound=0, upper_bound=2**32 - 1)
_TRAIN_PAIRS = flags.DEFINE_integer("num_train_pairs", 2000, "editreward_demo: pairs in the train split.",
                                    lower_bound=1)
_TEST_PAIRS = flags.DEFINE_integer("num_test_pairs", 300, "editreward_demo: pairs in the test split.", lower_bound=1)
_IMAGE_SIZE = flags.DEFINE_integer("image_size", 112, "editreward_demo: side of the square images in pixels.",
                                   lower_bound=MIN_IMAGE_SIZE)
_IN_SOURCE_TREE = flags.DEFINE_bool("allow_data_dir_in_source_tree", False, "Allow a data_dir inside this "
                                    "repository (refused by default: generated data does not belong in the code).")
_VERBOSE = cli.verbose_flag()
_EDITS = flags.DEFINE_integer("edits_per_source", 4, "editreward_demo: edits per source image, paired all against "
                              "all.", lower_bound=2, upper_bound=10)


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  cli.quiet_logs(_VERBOSE.value)
  if not _VERBOSE.value:
    tfds.disable_progress_bar()
  data_dir = os.path.abspath(paths.expand(_DATA_DIR.value))
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  if os.path.commonpath([repo, data_dir]) == repo and not _IN_SOURCE_TREE.value:
    sys.exit(f"data.build: --data_dir={_DATA_DIR.value} is inside the source tree {repo} (a shell leaves ~ in "
             "--flag=~/x unexpanded; it is expanded here); choose a folder outside it, or pass "
             "--allow_data_dir_in_source_tree")
  config = None
  if _DATASET.value == "editreward_demo":
    config = demo_config(seed=_SEED.value, num_train_pairs=_TRAIN_PAIRS.value, num_test_pairs=_TEST_PAIRS.value,
                         image_size=_IMAGE_SIZE.value, edits_per_source=_EDITS.value)
  start = time.perf_counter()
  print(f"building {_DATASET.value} into {data_dir} (nothing to do if it is there)", flush=True)
  with cli.one_line_errors(DataError):
    builder = build(_DATASET.value, data_dir, manual_dir=_MANUAL_DIR.value, config=config)
  splits = {name: split.num_examples for name, split in builder.info.splits.items()}
  print(f"built {_DATASET.value} in {time.perf_counter() - start:.1f}s at {builder.data_dir}: {splits}")


if __name__ == "__main__":
  cli.run(main)
