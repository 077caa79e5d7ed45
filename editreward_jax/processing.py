"""Host-side preparation of one edit (instruction, source image, edited image) for the reward model.

Images: decoded from a PIL image, a path, encoded bytes or a `{"bytes", "path"}` record (a Hugging Face image
column), without applying EXIF orientation (as `PIL.Image.open` gives them to the image processor); made RGB exactly
as transformers' `convert_to_rgb` does (anything with an alpha band or a transparency key is composited over white);
resized with PIL bicubic to `smart_resize`; and cut into merge-block-ordered rows of C * temporal * patch * patch
values, kept as uint8. `PIXEL_TABLE` holds what each value normalises to (scaled by 1/255 in float64 then cast to
float32, then CLIP-normalised): the model normalises on the device by that table (`vision_layout.normalise_pixels`),
so a quarter of the bytes cross worker shared memory and the host-device link, and `ProcessedImage.normalised()` gives
the same floats on the host. Those are bit-identical to transformers' `Qwen2VLImageProcessorPil`.

Prompts: one chat per quality dimension, a single user turn [source image, edited image, rubric text + suffix],
rendered by the tokenizer's chat template with the generation prompt and tokenized without extra special tokens (the
template writes them all). The suffix, and with it `<|Reward|>`, therefore sits inside the user turn, directly after
the rubric text, followed by `<|im_end|>\\n<|im_start|>assistant\\n`: that is the reference's input (REFERENCE.md,
"Input": the suffix is the last part of the user turn, and the chat is rendered with the generation prompt). The
tokens after `<|Reward|>` cannot change the reward (causal attention); they only cost a few positions. Each
`<|image_pad|>` is then expanded to its image's merged-token count, as `Qwen2_5_VLProcessor` does.
"""

from __future__ import annotations

import dataclasses
import io
import math
import os
from typing import Any, Mapping, Sequence

import numpy as np
import PIL.Image

from editreward_jax.models import vision_layout
from editreward_jax.prompts import DIMENSIONS, REWARD_TOKEN, PromptError, Prompts

IMAGE_PAD = "<|image_pad|>"
DEFAULT_PIXELS = 200704  # 448 * 448: min_pixels = max_pixels in the reference, 256 merged tokens per square image
CLIP_MEAN = np.array([0.48145466, 0.4578275, 0.40821073], np.float32)  # OPENAI_CLIP_MEAN
CLIP_STD = np.array([0.26862954, 0.26130258, 0.27577711], np.float32)  # OPENAI_CLIP_STD
MAX_ASPECT_RATIO = 200
# Every value a normalised pixel can take, per channel [C, 256]: rescaled as transformers does (float64 * 1/255,
# then float32), then CLIP-normalised in float32, so a table lookup gives its exact bits without float work per pixel.
PIXEL_TABLE = np.ascontiguousarray(
    (((np.arange(256) * (1 / 255)).astype(np.float32)[:, None] - CLIP_MEAN) / CLIP_STD).T)
PIXEL_TABLE.flags.writeable = False  # batches hold it uncopied: a write through one would change them all
# Texts that render the chat once around a placeholder (`Processor._chat_frame`): whitespace at both ends, braces and
# markup, so a template that strips, escapes or repeats its text fails the check and is rendered per prompt.
_FRAME_PROBES = (" \n{probe}\t<b>&amp; ", "\tsecond <probe/> {{x}}\n ")

ImageInput = PIL.Image.Image | str | os.PathLike | bytes | bytearray | memoryview | Mapping[str, Any]


class ImageError(ValueError):
  """An image that cannot be decoded or resized; the message names the field (and file)."""


@dataclasses.dataclass(frozen=True)
class ProcessedImage:
  pixel_values: np.ndarray  # [grid_h * grid_w, C * temporal * patch * patch] uint8, merge-block order
  grid_thw: np.ndarray      # (3,) int64: (1, grid_h, grid_w)

  def normalised(self) -> np.ndarray:
    """The float32 pixel rows transformers' image processor gives (for models fed floats, e.g. PyTorch)."""
    return vision_layout.normalise_pixels(self.pixel_values, PIXEL_TABLE)


@dataclasses.dataclass(frozen=True)
class ProcessedExample:
  images: tuple[ProcessedImage, ProcessedImage]  # (source, edited): the reading order of every prompt row
  prompts: dict[str, np.ndarray]                 # dimension -> token ids [L] int32
  reward_index: dict[str, int]                   # dimension -> position of <|Reward|> in prompts[dimension]


def check_pixel_bounds(min_pixels: int, max_pixels: int) -> None:
  if not 0 < min_pixels <= max_pixels:
    raise ValueError(f"need 0 < min_pixels <= max_pixels, got min_pixels={min_pixels}, max_pixels={max_pixels}")


def smart_resize(height: int, width: int, factor: int = 28, min_pixels: int = DEFAULT_PIXELS,
                 max_pixels: int = DEFAULT_PIXELS) -> tuple[int, int]:
  """Target (height, width): multiples of `factor`, aspect ratio about kept, area pulled into [min, max]_pixels.

  Same arithmetic as transformers' `smart_resize`, so sizes match its image processor exactly. Like transformers 5
  (unlike older versions, which rejected sides shorter than `factor`), small images are scaled up; in that branch a
  very elongated image can end above max_pixels.
  """
  check_pixel_bounds(min_pixels, max_pixels)
  if height < 1 or width < 1:
    raise ValueError(f"image is empty ({width}x{height} pixels)")
  if max(height, width) / min(height, width) > MAX_ASPECT_RATIO:
    raise ValueError(f"a {width}x{height} image has aspect ratio {max(height, width) / min(height, width):.1f}, "
                     f"above the limit of {MAX_ASPECT_RATIO}")
  h = round(height / factor) * factor
  w = round(width / factor) * factor
  if h * w > max_pixels:
    beta = math.sqrt((height * width) / max_pixels)
    h = max(factor, math.floor(height / beta / factor) * factor)
    w = max(factor, math.floor(width / beta / factor) * factor)
  elif h * w < min_pixels:  # also catches a side rounded to 0, so both sides end >= factor
    beta = math.sqrt(min_pixels / (height * width))
    h = math.ceil(height * beta / factor) * factor
    w = math.ceil(width * beta / factor) * factor
  return h, w


def open_image(image: ImageInput, field: str = "image") -> PIL.Image.Image:
  """Decodes an image input fully (so corrupt data fails here, naming `field` and the file)."""
  if isinstance(image, PIL.Image.Image):
    return image
  if isinstance(image, Mapping):
    image = image.get("bytes") or image.get("path")
  if isinstance(image, (str, os.PathLike)):
    what, src = os.fspath(image), os.fspath(image)
  elif isinstance(image, (bytes, bytearray, memoryview)):
    what, src = f"{len(image)} bytes", io.BytesIO(image)
  else:
    raise ImageError(f"{field}: expected a PIL image, a path or encoded image bytes, got {type(image).__name__}")
  try:
    with PIL.Image.open(src) as img:
      img.load()
  except Exception as e:  # PIL raises many types (OSError, SyntaxError, DecompressionBombError, ...)
    raise ImageError(f"{field}: cannot decode image ({what}): {e}") from e
  return img


def to_rgb(image: PIL.Image.Image) -> PIL.Image.Image:
  """RGB the way transformers' `convert_to_rgb` makes it: transparency composited over white."""
  if "A" in image.getbands() or image.info.get("transparency") is not None:
    rgba = image.convert("RGBA")
    white = PIL.Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return PIL.Image.alpha_composite(white, rgba).convert("RGB")
  return image.convert("RGB")


def process_image(image: PIL.Image.Image, *, min_pixels: int = DEFAULT_PIXELS, max_pixels: int = DEFAULT_PIXELS,
                  patch_size: int = 14, merge_size: int = 2, temporal_patch_size: int = 2) -> ProcessedImage:
  """Resize and patchify one decoded image into uint8 rows (ValueError from `smart_resize` for unusable sizes)."""
  rgb = to_rgb(image)
  h, w = smart_resize(rgb.height, rgb.width, patch_size * merge_size, min_pixels, max_pixels)
  x = np.asarray(rgb.resize((w, h), PIL.Image.Resampling.BICUBIC))
  gh, gw, m, p = h // patch_size, w // patch_size, merge_size, patch_size
  # [H, W, C] -> (block row, block col, row in block, col in block, C, patch row, patch col)
  x = x.reshape(gh // m, m, p, gw // m, m, p, 3).transpose(0, 3, 1, 4, 6, 2, 5)
  out = np.empty((gh // m, gw // m, m, m, 3, temporal_patch_size, p, p), np.uint8)
  out[...] = x[:, :, :, :, :, None]  # a still image fills every frame
  return ProcessedImage(out.reshape(gh * gw, -1), np.array([1, gh, gw], np.int64))


def add_reward_token(tokenizer, source: str = "the tokenizer") -> int:
  """Adds `<|Reward|>` as a special token and returns its id: the base tokenizer's length, which is where the
  reference's resized embedding has its row. A tokenizer that has it already is accepted when it is that last
  token, and refused otherwise (its row would not be the trained one)."""
  vocab = tokenizer.get_vocab()
  if REWARD_TOKEN in vocab:
    if vocab[REWARD_TOKEN] != len(tokenizer) - 1:
      raise ValueError(f"{source}: {REWARD_TOKEN} already has id {vocab[REWARD_TOKEN]}, but reward models read it at "
                       f"the base tokenizer's length {len(tokenizer) - 1} (it must be the last token)")
    return vocab[REWARD_TOKEN]
  base = len(tokenizer)
  tokenizer.add_special_tokens({"extra_special_tokens": [REWARD_TOKEN]}, replace_extra_special_tokens=False)
  reward_id = tokenizer.get_vocab()[REWARD_TOKEN]
  if reward_id != base:
    raise ValueError(f"{source}: {REWARD_TOKEN} was given id {reward_id}, not the tokenizer's length {base} (gaps in "
                     "its added-token ids?)")
  return reward_id


def load_tokenizer(path: str | os.PathLike):
  """A local Hugging Face tokenizer directory (never downloads), with `<|Reward|>` added (see `add_reward_token`).

  Qwen2 tokenizers add no BOS (nor any special token) around text, and the prompts rely on that: the chat template
  writes every special token itself. That is checked here rather than assumed.
  """
  from transformers import AutoTokenizer  # deferred: heavy, and only needed where a tokenizer is built
  tokenizer = AutoTokenizer.from_pretrained(os.fspath(path), local_files_only=True)
  plain, special = (tokenizer("a", add_special_tokens=flag)["input_ids"] for flag in (False, True))
  if plain != special:
    raise ValueError(f"{os.fspath(path)}: the tokenizer adds special tokens around text ({special} for {plain}), "
                     "e.g. a BOS; Qwen2 tokenizers add none and the chat template writes them all")
  add_reward_token(tokenizer, os.fspath(path))
  return tokenizer


class Processor:
  """(instruction, source image, edited image) -> pixel rows and one token row per quality dimension.

  Holds only the tokenizer, the prompts and numbers, so it pickles into Grain worker processes.
  """

  def __init__(self, tokenizer, prompts: Prompts, *, min_pixels: int = DEFAULT_PIXELS,
               max_pixels: int = DEFAULT_PIXELS, patch_size: int = 14, merge_size: int = 2,
               temporal_patch_size: int = 2):
    check_pixel_bounds(min_pixels, max_pixels)
    if not getattr(tokenizer, "chat_template", None):
      raise ValueError("the tokenizer has no chat_template (tokenizer_config.json or chat_template.jinja)")
    vocab = tokenizer.get_vocab()
    for token in (IMAGE_PAD, REWARD_TOKEN):
      if token not in vocab:
        raise ValueError(f"the tokenizer has no {token} token" +
                         (" (call add_reward_token(tokenizer) first)" if token == REWARD_TOKEN else ""))
    self.tokenizer = tokenizer
    self.prompts = prompts
    self.min_pixels, self.max_pixels = min_pixels, max_pixels
    self.patch_size, self.merge_size, self.temporal_patch_size = patch_size, merge_size, temporal_patch_size
    self.image_pad_id = vocab[IMAGE_PAD]
    self.reward_id = vocab[REWARD_TOKEN]
    self._frames: dict[int, tuple[str, str] | None] = {}  # image count -> `_chat_frame`

  def image(self, image: ImageInput, field: str = "image") -> ProcessedImage:
    """Decode and process one image; any failure is an ImageError naming `field`."""
    try:
      return process_image(open_image(image, field), min_pixels=self.min_pixels, max_pixels=self.max_pixels,
                           patch_size=self.patch_size, merge_size=self.merge_size,
                           temporal_patch_size=self.temporal_patch_size)
    except ImageError:
      raise
    except (ValueError, OSError, SyntaxError) as e:  # PIL: truncated data, also of an image opened lazily earlier
      raise ImageError(f"{field}: {e}") from e

  def num_image_tokens(self, grid_thw: np.ndarray) -> int:
    """Merged tokens (LLM positions) of one image."""
    return int(np.prod(grid_thw)) // self.merge_size**2

  def encode(self, dimension: str, instruction: str, grids: Sequence[np.ndarray]) -> tuple[np.ndarray, int]:
    """Token ids [L] int32 of one dimension's chat over images with `grids`, and the `<|Reward|>` position."""
    return self.expand_images(self.prompt_ids(dimension, instruction, len(grids)), grids)

  def prompt_ids(self, dimension: str, instruction: str, num_images: int) -> np.ndarray:
    """Token ids [L] int32 of one dimension's chat over `num_images` images, one `<|image_pad|>` each: the same
    for every image size, so `expand_images` can give both candidates of a training pair their rows from one."""
    text = self.prompts.text(dimension, instruction)
    if num_images not in self._frames:
      self._frames[num_images] = self._chat_frame(num_images)
    frame = self._frames[num_images]
    chat = self._render(text, num_images) if frame is None else frame[0] + text + frame[1]
    ids = np.asarray(self.tokenizer.encode(chat, add_special_tokens=False), np.int32)
    pads = np.count_nonzero(ids == self.image_pad_id)
    if pads != num_images:
      raise PromptError(f"{dimension} prompt: {pads} {IMAGE_PAD} tokens for {num_images} images "
                        f"(the instruction or the rubric in {self.prompts.source} must not contain {IMAGE_PAD})")
    rewards = np.count_nonzero(ids == self.reward_id)
    if rewards != 1:
      raise PromptError(f"{dimension} prompt: {rewards} {REWARD_TOKEN} tokens, need exactly one "
                        f"(the instruction must not contain {REWARD_TOKEN}; check {self.prompts.source})")
    return ids

  def expand_images(self, ids: np.ndarray, grids: Sequence[np.ndarray]) -> tuple[np.ndarray, int]:
    """`prompt_ids` with each `<|image_pad|>` repeated to its image's merged-token count, as
    `Qwen2_5_VLProcessor` does, and the position of `<|Reward|>`."""
    repeats = np.ones(len(ids), np.int64)
    repeats[ids == self.image_pad_id] = [self.num_image_tokens(g) for g in grids]
    ids = np.repeat(ids, repeats)
    return ids, int(np.flatnonzero(ids == self.reward_id)[0])

  def _render(self, text: str, num_images: int) -> str:
    content = [{"type": "image"} for _ in range(num_images)]
    content.append({"type": "text", "text": text})
    return self.tokenizer.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True,
                                              tokenize=False)

  def _chat_frame(self, num_images: int) -> tuple[str, str] | None:
    """(head, tail) such that the chat of any text is head + text + tail, if the template passes its text through
    verbatim (the same frame around every probe); else None, and each chat is rendered (Jinja costs more than the
    tokenizer here)."""
    frames = set()
    for probe in _FRAME_PROBES:
      chat = self._render(probe, num_images)
      if chat.count(probe) != 1:
        return None
      frames.add(tuple(chat.split(probe)))
    return frames.pop() if len(frames) == 1 else None

  def __call__(self, instruction: str, source_image: ImageInput, edited_image: ImageInput, *,
               where: str = "") -> ProcessedExample:
    """One edit; `where` (e.g. "edits.jsonl row 7") prefixes every error message."""
    prefix = f"{where}: " if where else ""
    if not isinstance(instruction, str):
      raise ValueError(f"{prefix}instruction: expected a string, got {type(instruction).__name__}")
    images = (self.image(source_image, prefix + "source_image"), self.image(edited_image, prefix + "edited_image"))
    grids = [im.grid_thw for im in images]
    try:
      encoded = {d: self.encode(d, instruction, grids) for d in DIMENSIONS}
    except PromptError as e:
      raise PromptError(prefix + str(e)) from e
    return ProcessedExample(images=images, prompts={d: ids for d, (ids, _) in encoded.items()},
                            reward_index={d: r for d, (_, r) in encoded.items()})
