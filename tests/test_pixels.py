"""Pixels travel as uint8 with `processing.PIXEL_TABLE` and are normalised on the device: the floats the model sees
must be the exact bits of transformers' float normalisation, on the host (`ProcessedImage.normalised`), on the device
(`vision_layout.normalise_pixels` under jit) and through a whole forward, and a float batch must still go in as is."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import PIL.Image
import pytest
from flax import nnx

from configs.presets import TINY
from editreward_jax import batching, processing
from editreward_jax.models import inputs, vision_layout
from editreward_jax.models.qwen2_5_vl import Qwen25VL


def float_pixels(image: PIL.Image.Image, h: int, w: int) -> np.ndarray:
  """The normalisation and patch layout computed in floats, as transformers' image processor does."""
  x = np.asarray(processing.to_rgb(image).resize((w, h), PIL.Image.Resampling.BICUBIC))
  x = ((x.astype(np.float64) * (1 / 255)).astype(np.float32) - processing.CLIP_MEAN) / processing.CLIP_STD
  x = x.reshape(h // 28, 2, 14, w // 28, 2, 14, 3).transpose(0, 3, 1, 4, 6, 2, 5)
  return np.repeat(x[:, :, :, :, :, None], 2, axis=5).reshape(h * w // 196, -1)


def ramp_image(width: int, height: int, seed: int = 0) -> PIL.Image.Image:
  ramp = np.arange(width * height * 3) % 256  # every value on every channel
  return PIL.Image.fromarray(np.random.default_rng(seed).permutation(ramp).reshape(height, width, 3).astype(np.uint8))


def bits(x) -> np.ndarray:
  return np.asarray(x).view(np.uint32)


@pytest.mark.parametrize("width, height", [(56, 56), (112, 84), (300, 200)])
def test_uint8_rows_normalise_to_the_float_bits_on_host_and_device(width, height):
  image = ramp_image(width, height)
  got = processing.process_image(image, min_pixels=28 * 28, max_pixels=width * height)
  _, h, w = got.grid_thw * 14
  want = float_pixels(image, h, w)
  assert got.pixel_values.dtype == np.uint8 and got.pixel_values.flags.c_contiguous
  host = got.normalised()
  assert host.dtype == np.float32
  np.testing.assert_array_equal(bits(host), bits(want))
  device = jax.jit(vision_layout.normalise_pixels)(jnp.asarray(got.pixel_values), jnp.asarray(processing.PIXEL_TABLE))
  assert device.dtype == jnp.float32
  np.testing.assert_array_equal(bits(device), bits(want))


def image_rows(grids: np.ndarray) -> list[list[int]]:
  """One row per image: text, the image's merged tokens, text."""
  c = TINY
  return [[1, 2, c.vision_start_token_id] + [c.image_token_id] * (int(np.prod(g)) // 4) + [c.vision_end_token_id, 5, 6]
          for g in grids]


def test_a_forward_on_uint8_pixels_equals_the_forward_on_their_floats():
  images = [processing.process_image(ramp_image(w, h, seed), min_pixels=28 * 28, max_pixels=w * h)
            for w, h, seed in [(56, 84, 1), (112, 56, 2)]]
  grids = np.stack([im.grid_thw for im in images])
  rows = image_rows(grids)
  quantised = inputs.make_batch(rows, TINY, pixel_values=np.concatenate([im.pixel_values for im in images]),
                                image_grid_thw=grids, pixel_table=processing.PIXEL_TABLE)
  floats = inputs.make_batch(rows, TINY, pixel_values=np.concatenate([im.normalised() for im in images]),
                             image_grid_thw=grids)
  q, f = quantised["vision"], floats["vision"]
  assert q["pixels"].dtype == np.uint8 and f["pixels"].dtype == np.float32 and "pixel_table" not in f
  assert q["pixels"].nbytes * 4 == f["pixels"].nbytes
  np.testing.assert_array_equal(q["pixel_table"], processing.PIXEL_TABLE)

  model = Qwen25VL(TINY, rngs=nnx.Rngs(0))
  # Features of the images' merged units (padding slots differ: uint8 zeros normalise to table[c, 0], and are masked).
  forward = nnx.jit(lambda m, b: (m.vision_features(b["vision"])[0, b["vision"]["unit_slots"]], m(**b)))
  (q_feats, q_hidden), (f_feats, f_hidden) = (forward(model, jax.tree.map(jnp.asarray, b)) for b in (quantised, floats))
  np.testing.assert_array_equal(bits(q_feats), bits(f_feats))
  np.testing.assert_array_equal(bits(q_hidden), bits(f_hidden))


def test_collated_shards_carry_uint8_pixels_and_the_table_even_when_all_padding():
  image = processing.process_image(ramp_image(56, 56), min_pixels=28 * 28, max_pixels=56 * 56)
  table = batching.ImageTable()
  tokens = np.asarray(image_rows(image.grid_thw[None])[0], np.int32)
  rows = [batching.Row(tokens, (table.add(image),), len(tokens) - 1, 0)]  # the last token as <|Reward|>
  shape = batching.BatchShape(rows=1, seq_len=64, images=1, windows=1, patches=16, units=4)
  full = batching.collate(rows, table, TINY, rope_mode="sequential", shape=shape)
  empty = batching.collate([batching.Row(np.array([1, 2, 3], np.int32), (), 2, 0)], batching.ImageTable(), TINY,
                           rope_mode="sequential", shape=shape)
  vision = batching.stack_shards([full, empty])["batch"]["vision"]
  assert vision["pixels"].dtype == np.uint8 and vision["pixels"].shape[0] == 2 and not vision["pixels"][1].any()
  np.testing.assert_array_equal(vision["pixel_table"], np.stack([processing.PIXEL_TABLE] * 2))
  slots = vision["image_slots"][0, 0, :vision["image_lengths"][0, 0]]
  got = vision_layout.normalise_pixels(vision["pixels"][0], vision["pixel_table"][0])[slots]
  want = vision_layout.build_vision_batch(image.normalised(), image.grid_thw[None], TINY.vision).pixels[slots]
  np.testing.assert_array_equal(bits(got), bits(want))


def test_pixels_and_table_must_come_together():
  image = processing.process_image(ramp_image(56, 56), min_pixels=28 * 28, max_pixels=56 * 56)
  with pytest.raises(ValueError, match="uint8 pixel_values without a pixel_table"):
    vision_layout.build_vision_batch(image.pixel_values, image.grid_thw[None], TINY.vision)
  with pytest.raises(ValueError, match="float32 pixel_values with a pixel_table"):
    vision_layout.build_vision_batch(image.normalised(), image.grid_thw[None], TINY.vision,
                                     pixel_table=processing.PIXEL_TABLE)
  with pytest.raises(ValueError, match=r"pixel_table has shape \(768,\)"):
    vision_layout.build_vision_batch(image.pixel_values, image.grid_thw[None], TINY.vision,
                                     pixel_table=processing.PIXEL_TABLE.reshape(-1))
