"""The chat template comes from where the base directory keeps it, and renders as transformers renders it."""

from __future__ import annotations

import hashlib
import json
import os
import shutil

import numpy as np
import pytest

import data
from convert import from_hf
from editreward_jax import model_dir, processing
from editreward_jax.prompts import DIMENSIONS, load_prompts

HERE = os.path.dirname(os.path.abspath(__file__))
with open(os.path.join(HERE, "fixtures", "qwen2_5_vl_chat_template.json"), encoding="utf-8") as f:
  QWEN25_VL_TEMPLATE = json.load(f)["chat_template"]  # Qwen2.5-VL-7B-Instruct's chat_template.json, verbatim


def _tokenizer_dir(dst, *, keep_template: bool) -> str:
  """The bundled tiny tokenizer's files, with or without the template its tokenizer_config.json carries."""
  shutil.copytree(data.TINY_TOKENIZER, dst)
  if not keep_template:
    path = os.path.join(dst, "tokenizer_config.json")
    with open(path) as f:
      config = json.load(f)
    del config["chat_template"]
    with open(path, "w") as f:
      json.dump(config, f)
  return str(dst)


def test_templates_are_found_in_transformers_order(tmp_path):
  base = _tokenizer_dir(tmp_path / "base", keep_template=True)
  with open(os.path.join(base, "tokenizer_config.json")) as f:
    assert from_hf.find_chat_template(base) == (json.load(f)["chat_template"], "tokenizer_config.json")
  with open(os.path.join(base, "processor_config.json"), "w") as f:
    json.dump({"chat_template": "processor config"}, f)
  assert from_hf.find_chat_template(base) == ("processor config", "processor_config.json")
  with open(os.path.join(base, "chat_template.jinja"), "w") as f:
    f.write("raw jinja")
  assert from_hf.find_chat_template(base) == ("raw jinja", "chat_template.jinja")
  with open(os.path.join(base, "chat_template.json"), "w") as f:
    json.dump({"chat_template": QWEN25_VL_TEMPLATE}, f)
  assert from_hf.find_chat_template(base) == (QWEN25_VL_TEMPLATE, "chat_template.json")

  bare = _tokenizer_dir(tmp_path / "bare", keep_template=False)
  with pytest.raises(ValueError, match=r"bare: no chat template \(looked for one in chat_template.json, "):
    from_hf.find_chat_template(bare)


def test_the_qwen_template_renders_the_reference_layout_as_transformers_does():
  tokenizer = processing.load_tokenizer(data.TINY_TOKENIZER)
  tokenizer.chat_template = QWEN25_VL_TEMPLATE
  prompts = load_prompts()
  processor = processing.Processor(tokenizer, prompts)
  for dimension in DIMENSIONS:
    text = prompts.text(dimension, "make the sky pink")
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "image"}, {"type": "text", "text": text}]}]
    want = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    want = want["input_ids"] if isinstance(want, dict) or hasattr(want, "keys") else want
    one_token = np.array([1, 2, 2])  # a 2x2-patch image: one merged token, so one <|image_pad|> as in the chat
    got, _ = processor.encode(dimension, "make the sky pink", [one_token, one_token])
    np.testing.assert_array_equal(got, want)
    rendered = tokenizer.decode(got)
    assert rendered.startswith("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
                               "<|vision_start|><|image_pad|><|vision_end|><|vision_start|><|image_pad|>")
    assert rendered.endswith("<|im_end|>\n<|im_start|>assistant\n")


@pytest.mark.torch
def test_import_takes_the_base_template_and_records_it(tmp_path):
  torch = pytest.importorskip("torch")
  import transformers

  from configs.presets import TINY
  from editreward_jax.models.config import to_hf_dict
  torch.manual_seed(0)
  base = _tokenizer_dir(tmp_path / "base", keep_template=False)
  transformers.Qwen2_5_VLForConditionalGeneration(transformers.Qwen2_5_VLConfig(**to_hf_dict(TINY))).save_pretrained(base)
  with pytest.raises(ValueError, match="no chat template"):
    from_hf.import_hf(base, str(tmp_path / "refused"))
  with open(os.path.join(base, "chat_template.json"), "w") as f:
    json.dump({"chat_template": QWEN25_VL_TEMPLATE}, f)

  out = from_hf.import_hf(base, str(tmp_path / "ckpt"))
  meta = model_dir.read_meta(out)
  assert meta.settings["chat_template"] == {"file": "chat_template.json",
                                            "sha256": hashlib.sha256(QWEN25_VL_TEMPLATE.encode()).hexdigest()}
  assert processing.load_tokenizer(meta.tokenizer_dir).chat_template == QWEN25_VL_TEMPLATE
