from __future__ import annotations

import json

import pytest

from editreward_jax import prompts

GOOD = {"instruction_following": "Follow? {instruction}", "visual_quality": "Quality of {instruction} {x}",
        "suffix": "\nScore: <|Reward|>"}


def write(tmp_path, fields) -> str:
  path = tmp_path / "rubric.json"
  path.write_text(json.dumps(fields) if not isinstance(fields, str) else fields, encoding="utf-8")
  return str(path)


def test_default_rubric_is_valid_and_original_per_dimension():
  p = prompts.load_prompts()
  assert set(p.templates) == set(prompts.DIMENSIONS)
  assert p.templates["instruction_following"] != p.templates["visual_quality"]
  assert p.suffix.count(prompts.REWARD_TOKEN) == 1


def test_text_inserts_instruction_verbatim_then_suffix(tmp_path):
  p = prompts.load_prompts(write(tmp_path, GOOD))
  assert p.text("visual_quality", "write {name} on it") == "Quality of write {name} on it {x}\nScore: <|Reward|>"
  assert prompts.prompts_from_dict(p.to_dict()) == prompts.Prompts(p.templates, p.suffix)


@pytest.mark.parametrize("change, message", [
  ({"suffix": "Score:"}, "exactly once, found it 0 times"),
  ({"suffix": "<|Reward|> <|Reward|>"}, "exactly once, found it 2 times"),
  ({"visual_quality": "no placeholder"}, "'visual_quality' has no {instruction}"),
  ({"instruction_following": "{instruction} <|Reward|>"}, "'instruction_following' contains <|Reward|>"),
  ({"suffix": 3}, "'suffix' must be a string"),
  ({"visual_qualty": "typo {instruction}"}, "unknown fields ['visual_qualty']"),
])
def test_bad_fields_name_file_and_field(tmp_path, change, message):
  path = write(tmp_path, {**GOOD, **change})
  with pytest.raises(prompts.PromptError) as e:
    prompts.load_prompts(path)
  assert path in str(e.value) and message in str(e.value)


def test_missing_field_and_bad_json_name_the_file(tmp_path):
  fields = dict(GOOD)
  del fields["visual_quality"]
  path = write(tmp_path, fields)
  with pytest.raises(prompts.PromptError, match=r"missing fields \['visual_quality'\]"):
    prompts.load_prompts(path)
  path = write(tmp_path, '{"suffix": ')
  with pytest.raises(prompts.PromptError, match="rubric.json: invalid JSON"):
    prompts.load_prompts(path)
  with pytest.raises(prompts.PromptError, match="nope.json: cannot read"):
    prompts.load_prompts(tmp_path / "nope.json")
