"""TFDS feature specs of the pair-row schema; the schema itself (columns, DataError) is editreward_jax/schema.py.

Everything of editreward_jax.schema is re-exported here, so `data.schema.DataError` and `data.schema.COLUMNS` name
the same objects as the library's.
"""

from __future__ import annotations

import numpy as np
import tensorflow_datasets as tfds

from editreward_jax.schema import (
  COLUMNS,
  DIMENSIONS,
  IMAGE_COLUMNS,
  INT_COLUMNS,
  SCORE_COLUMNS,
  SIDES,
  TEXT_COLUMNS,
  VOTE_TYPES,
  DataError,
  image_path_field,
  row_error,
  vote_from_scores,
)

__all__ = ["COLUMNS", "DIMENSIONS", "IMAGE_COLUMNS", "INT_COLUMNS", "SCORE_COLUMNS", "SIDES", "TEXT_COLUMNS",
           "VOTE_TYPES", "DataError", "encoded_image_feature", "image_path_field", "pair_features", "row_error",
           "vote_from_scores"]


def encoded_image_feature(doc: str) -> tfds.features.Tensor:
  """Encoded image bytes kept as they are: no TensorFlow needed to write or read, no decode on read."""
  return tfds.features.Tensor(shape=(), dtype=np.object_, doc=doc)


def pair_features() -> tfds.features.FeaturesDict:
  features: dict[str, tfds.features.FeatureConnector] = {}
  for column in TEXT_COLUMNS:
    features[column] = tfds.features.Text()
  for column in INT_COLUMNS:
    features[column] = tfds.features.Scalar(np.int32)
  for column in SCORE_COLUMNS:
    features[column] = tfds.features.Scalar(np.float32, doc="1..4 per dimension; overall is their sum")
  for column in IMAGE_COLUMNS:
    features[column] = encoded_image_feature("encoded image (PNG or JPEG) as stored in the source")
    features[image_path_field(column)] = tfds.features.Text(doc="path member of the source image struct")
  return tfds.features.FeaturesDict(features)
