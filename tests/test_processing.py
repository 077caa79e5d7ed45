"""Processing against transformers' own pieces: the PIL-backend Qwen2-VL image processor, the tokenizer, and the
placeholder expansion of Qwen2_5_VLProcessor (re-done here from its source, since that class needs torchvision)."""

from __future__ import annotations

import importlib.util
import io
import json
import pathlib
import pickle
import shutil

import numpy as np
import PIL.Image
import pytest
from transformers import AutoTokenizer, PreTrainedTokenizerFast
from transformers.models.qwen2_vl import image_processing_pil_qwen2_vl as hf_image

from editreward_jax import processing, prompts

ROOT = pathlib.Path(__file__).resolve().parents[1]
TOKENIZER_DIR = ROOT / "data" / "tiny_tokenizer"
SMALL = dict(min_pixels=56 * 56, max_pixels=28 * 28 * 20)  # at most 80 patches: keeps the comparisons fast
SYSTEM = "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
IMAGE = "<|vision_start|><|image_pad|><|vision_end|>"


@pytest.fixture(scope="module")
def tokenizer():
  return processing.load_tokenizer(TOKENIZER_DIR)


@pytest.fixture(scope="module")
def processor(tokenizer):
  return processing.Processor(tokenizer, prompts.load_prompts(), **SMALL)


def random_image(width: int, height: int, mode: str = "RGB", seed: int = 0) -> PIL.Image.Image:
  rng = np.random.default_rng(seed)
  if mode == "P":  # palette image whose index 0 is transparent
    img = PIL.Image.fromarray(rng.integers(0, 8, (height, width), dtype=np.uint8), "L").convert("P")
    img.putpalette(rng.integers(0, 256, 768, dtype=np.uint8).tobytes())
    img.info["transparency"] = 0
    return img
  bands = len(PIL.Image.new(mode, (1, 1)).getbands())
  data = rng.integers(0, 256, (height, width, bands), dtype=np.uint8)
  return PIL.Image.fromarray(data.squeeze(-1) if bands == 1 else data, mode)


def reference_pixels(img: PIL.Image.Image, min_pixels: int, max_pixels: int):
  out = hf_image.Qwen2VLImageProcessorPil(min_pixels=min_pixels, max_pixels=max_pixels)(images=[img])
  return np.asarray(out["pixel_values"]), np.asarray(out["image_grid_thw"])[0]


@pytest.mark.parametrize("width, height, mode", [
  (37, 91, "RGB"), (500, 333, "RGB"), (1024, 97, "RGB"), (10, 13, "RGB"), (300, 200, "L"), (91, 37, "RGBA"),
  (64, 120, "LA"), (77, 50, "P"),
])
def test_pixels_match_transformers(width, height, mode):
  img = random_image(width, height, mode)
  want, want_grid = reference_pixels(img, **SMALL)
  got = processing.process_image(img, **SMALL)
  assert got.pixel_values.dtype == np.uint8 and got.pixel_values.shape[1] == 3 * 2 * 14 * 14
  np.testing.assert_array_equal(got.grid_thw, want_grid)
  np.testing.assert_array_equal(got.normalised(), want)


def test_pixels_match_transformers_at_default_size():
  img = random_image(640, 427, "RGB", seed=1)
  want, want_grid = reference_pixels(img, processing.DEFAULT_PIXELS, processing.DEFAULT_PIXELS)
  got = processing.process_image(img)
  np.testing.assert_array_equal(got.grid_thw, want_grid)
  np.testing.assert_array_equal(got.normalised(), want)
  assert want_grid.prod() // 4 <= 256


def test_smart_resize_matches_transformers_and_rejects_bad_shapes():
  rng = np.random.default_rng(0)
  sizes = [(1, 1), (1, 199), (1, 200), (27, 29), (25, 5000), (448, 448), *rng.integers(20, 3000, (200, 2)).tolist()]
  for h, w in sizes:
    for lo, hi in [(200704, 200704), (3136, 1003520), (784, 784)]:
      assert processing.smart_resize(h, w, 28, lo, hi) == hf_image.smart_resize(h, w, 28, lo, hi), (h, w, lo, hi)
  for h, w in [(1, 201), (14, 5000)]:
    with pytest.raises(ValueError, match="aspect ratio"):
      hf_image.smart_resize(h, w)
  with pytest.raises(ValueError, match="aspect ratio 201.0"):
    processing.smart_resize(1, 201)
  with pytest.raises(ValueError, match="empty"):
    processing.smart_resize(0, 10)
  with pytest.raises(ValueError, match="min_pixels <= max_pixels"):
    processing.smart_resize(10, 10, min_pixels=100, max_pixels=50)


def test_paths_and_bytes_decode_like_pil_images(processor, tmp_path):
  img = random_image(60, 45, "RGBA", seed=2)
  buf = io.BytesIO()
  img.save(buf, "PNG")
  path = tmp_path / "edit.png"
  path.write_bytes(buf.getvalue())
  want = processor.image(img).pixel_values
  for source in (str(path), path, buf.getvalue(), {"bytes": buf.getvalue(), "path": None}, {"path": str(path)}):
    np.testing.assert_array_equal(processor.image(source).pixel_values, want)


def test_bad_images_name_the_field(processor, tmp_path):
  good = random_image(40, 40)
  with pytest.raises(processing.ImageError, match=r"row 3: edited_image: cannot decode image \(9 bytes\)"):
    processor("x", good, b"not a png", where="row 3")
  broken = tmp_path / "broken.png"
  broken.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)
  with pytest.raises(processing.ImageError, match="source_image: cannot decode image .*broken.png"):
    processor("x", broken, good)
  with pytest.raises(processing.ImageError, match="source_image: cannot decode image .*missing.png"):
    processor("x", tmp_path / "missing.png", good)
  with pytest.raises(processing.ImageError, match="edited_image: a 402x2 image has aspect ratio 201.0"):
    processor("x", good, random_image(402, 2))


def qwen_processor_ids(tokenizer, text: str, grids) -> list[int]:
  """What Qwen2_5_VLProcessor produces: the Qwen2.5-VL chat format, each <|image_pad|> in order replaced by
  grid.prod() // merge_size**2 copies of itself, then the tokenizer with its default arguments."""
  chat = SYSTEM + "<|im_start|>user\n" + IMAGE * len(grids) + text + "<|im_end|>\n<|im_start|>assistant\n"
  head, *rest = chat.split("<|image_pad|>")
  expanded = head + "".join("<|image_pad|>" * (int(np.prod(g)) // 4) + tail for g, tail in zip(grids, rest))
  return tokenizer(expanded)["input_ids"]


def test_tokens_match_chat_format_with_expanded_image_pads(processor, tokenizer):
  rubric = json.loads((ROOT / "editreward_jax" / "default_prompts.json").read_text(encoding="utf-8"))
  instruction = 'Write {name} on the "café" sign.'
  ex = processor(instruction, random_image(500, 333, seed=3), random_image(37, 91, "L", seed=4))
  grids = [im.grid_thw for im in ex.images]
  reward_id = tokenizer.convert_tokens_to_ids("<|Reward|>")
  for dim in prompts.DIMENSIONS:
    text = rubric[dim].replace("{instruction}", instruction) + rubric["suffix"]
    want = qwen_processor_ids(tokenizer, text, grids)
    assert ex.prompts[dim].dtype == np.int32
    assert ex.prompts[dim].tolist() == want
    assert want[ex.reward_index[dim]] == reward_id and want.count(reward_id) == 1
    pad = tokenizer.convert_tokens_to_ids("<|image_pad|>")
    assert want.count(pad) == sum(int(g.prod()) // 4 for g in grids)


def test_prompt_errors(tokenizer, tmp_path):
  processor = processing.Processor(tokenizer, prompts.load_prompts(), **SMALL)
  img = random_image(30, 30)
  with pytest.raises(prompts.PromptError, match="row 9: instruction_following prompt: 2 <\\|Reward\\|> tokens"):
    processor("add <|Reward|> here", img, img, where="row 9")
  with pytest.raises(prompts.PromptError, match="3 <\\|image_pad\\|> tokens for 2 images"):
    processor("add <|image_pad|>", img, img)
  with pytest.raises(ValueError, match="instruction: expected a string"):
    processor(None, img, img)
  bare = AutoTokenizer.from_pretrained(TOKENIZER_DIR, local_files_only=True)
  with pytest.raises(ValueError, match="no <\\|Reward\\|> token"):
    processing.Processor(bare, prompts.load_prompts())


def test_processor_pickles(processor):
  img = random_image(50, 70, seed=5)
  clone = pickle.loads(pickle.dumps(processor))
  a, b = processor("make it red", img, img), clone("make it red", img, img)
  for dim in prompts.DIMENSIONS:
    np.testing.assert_array_equal(a.prompts[dim], b.prompts[dim])


def test_chat_template_renders_like_qwen25vl(tokenizer):
  parts = [{"type": "image"}, {"type": "video"}, {"type": "text", "text": "hi"}]
  cases = [
    ([{"role": "user", "content": parts}], {}, SYSTEM + "<|im_start|>user\n" + IMAGE +
     "<|vision_start|><|video_pad|><|vision_end|>hi<|im_end|>\n<|im_start|>assistant\n"),
    ([{"role": "system", "content": "S"}, {"role": "user", "content": "U"}, {"role": "assistant", "content": "A"}],
     {}, "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nU<|im_end|>\n<|im_start|>assistant\nA<|im_end|>\n"
     "<|im_start|>assistant\n"),
    ([{"role": "user", "content": [{"type": "image"}, {"type": "image"}]}], {"add_vision_id": True},
     SYSTEM + "<|im_start|>user\nPicture 1: " + IMAGE + "Picture 2: " + IMAGE + "<|im_end|>\n<|im_start|>assistant\n"),
  ]
  for messages, kwargs, want in cases:
    assert tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False, **kwargs) == want


def test_tiny_tokenizer_files_are_fresh_small_and_load_both_ways(tmp_path):
  spec = importlib.util.spec_from_file_location("make_tiny_tokenizer", ROOT / "scripts" / "make_tiny_tokenizer.py")
  script = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(script)
  assert script.build().to_str(pretty=True) + "\n" == (TOKENIZER_DIR / "tokenizer.json").read_text(encoding="utf-8")
  assert script.tokenizer_config() == json.loads((TOKENIZER_DIR / "tokenizer_config.json").read_text(encoding="utf-8"))
  assert sum(f.stat().st_size for f in TOKENIZER_DIR.iterdir()) < 200_000
  auto = AutoTokenizer.from_pretrained(TOKENIZER_DIR, local_files_only=True)
  fast = PreTrainedTokenizerFast(tokenizer_file=str(TOKENIZER_DIR / "tokenizer.json"))
  text = "Ünïcode 日本 édit, 42 <|im_start|>user\n  spaced <|vision_start|>"
  assert auto.encode(text) == fast.encode(text)
  assert auto.decode(auto.encode(text)) == text
  assert len(auto) == 1023 and auto.convert_tokens_to_ids("<|image_pad|>") == 1013


def test_add_reward_token_appends_once():
  tok = AutoTokenizer.from_pretrained(TOKENIZER_DIR, local_files_only=True)
  n = len(tok)
  assert processing.add_reward_token(tok) == n
  assert processing.add_reward_token(tok) == n and len(tok) == n + 1
  assert tok.encode("a<|Reward|>b", add_special_tokens=False)[1] == n


def test_a_tokenizer_that_has_the_reward_token_is_accepted_only_at_the_base_length(tmp_path):
  saved = tmp_path / "with_reward"
  processing.load_tokenizer(TOKENIZER_DIR).save_pretrained(saved)  # <|Reward|> last, at id 1023
  assert processing.load_tokenizer(saved).get_vocab()["<|Reward|>"] == 1023
  shifted = AutoTokenizer.from_pretrained(saved, local_files_only=True)
  shifted.add_special_tokens({"extra_special_tokens": ["<|later|>"]}, replace_extra_special_tokens=False)
  shifted.save_pretrained(tmp_path / "shifted")  # <|Reward|> no longer the last token
  with pytest.raises(ValueError, match=r"shifted: <\|Reward\|> already has id 1023, but reward models read it at "
                                       r"the base tokenizer's length 1024"):
    processing.load_tokenizer(tmp_path / "shifted")


def test_a_tokenizer_that_adds_a_bos_is_refused(tmp_path):
  bos = tmp_path / "bos"
  shutil.copytree(TOKENIZER_DIR, bos)
  spec = json.loads((bos / "tokenizer.json").read_text(encoding="utf-8"))
  eot = next(t["id"] for t in spec["added_tokens"] if t["content"] == "<|endoftext|>")
  first = {"SpecialToken": {"id": "<|endoftext|>", "type_id": 0}}
  spec["post_processor"] = {
      "type": "TemplateProcessing", "single": [first, {"Sequence": {"id": "A", "type_id": 0}}],
      "pair": [first, {"Sequence": {"id": "A", "type_id": 0}}, {"Sequence": {"id": "B", "type_id": 1}}],
      "special_tokens": {"<|endoftext|>": {"id": "<|endoftext|>", "ids": [eot], "tokens": ["<|endoftext|>"]}}}
  (bos / "tokenizer.json").write_text(json.dumps(spec), encoding="utf-8")
  with pytest.raises(ValueError, match="the tokenizer adds special tokens around text"):
    processing.load_tokenizer(bos)
