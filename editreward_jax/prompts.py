"""Rubric prompts: one template per quality dimension and a suffix that carries the `<|Reward|>` read-out token.

A prompts file is a JSON object with exactly the fields
  {"instruction_following": "...{instruction}...", "visual_quality": "...{instruction}...",
   "suffix": "...<|Reward|>..."}
The text of one dimension's prompt is its template with every `{instruction}` replaced by the editing instruction,
followed directly by the suffix (no separator: the file controls all whitespace). Only `{instruction}` is substituted,
by plain replacement rather than `str.format`, so rubric text may contain other braces without escaping; the suffix
is used verbatim. `default_prompts.json` beside this module is the project's own rubric.
"""

from __future__ import annotations

import dataclasses
import importlib.resources
import json
import os
from typing import Any, Mapping

from editreward_jax import paths

DIMENSIONS = ("instruction_following", "visual_quality")  # in head order: head_0, head_1
REWARD_TOKEN = "<|Reward|>"
PLACEHOLDER = "{instruction}"
_FIELDS = (*DIMENSIONS, "suffix")


class PromptError(ValueError):
  """A prompts file or mapping that cannot be used; the message names its source and field."""


@dataclasses.dataclass(frozen=True)
class Prompts:
  templates: Mapping[str, str]  # dimension -> template containing PLACEHOLDER
  suffix: str                   # contains REWARD_TOKEN exactly once
  source: str = "<prompts>"     # file (or other origin) named in error messages

  def text(self, dimension: str, instruction: str) -> str:
    """The user-turn text for one dimension: rubric with the instruction inserted, then the suffix."""
    return self.templates[dimension].replace(PLACEHOLDER, instruction) + self.suffix

  def to_dict(self) -> dict[str, str]:
    """The prompts-file form (what a checkpoint records)."""
    return {**{d: self.templates[d] for d in DIMENSIONS}, "suffix": self.suffix}


def prompts_from_dict(fields: Any, source: str = "<prompts>") -> Prompts:
  """Validates the prompts-file fields; `source` names the origin in errors."""
  if not isinstance(fields, Mapping):
    raise PromptError(f"{source}: expected a JSON object with fields {list(_FIELDS)}, got {type(fields).__name__}")
  missing = [f for f in _FIELDS if f not in fields]
  unknown = sorted(set(fields) - set(_FIELDS))
  if missing or unknown:
    raise PromptError(f"{source}: missing fields {missing}, unknown fields {unknown}; expected exactly {list(_FIELDS)}")
  for f in _FIELDS:
    if not isinstance(fields[f], str):
      raise PromptError(f"{source}: field {f!r} must be a string, got {type(fields[f]).__name__}")
  for d in DIMENSIONS:
    if PLACEHOLDER not in fields[d]:
      raise PromptError(f"{source}: field {d!r} has no {PLACEHOLDER} placeholder for the editing instruction")
    if REWARD_TOKEN in fields[d]:
      raise PromptError(f"{source}: field {d!r} contains {REWARD_TOKEN}; only the suffix may hold the read-out token")
  n = fields["suffix"].count(REWARD_TOKEN)
  if n != 1:
    raise PromptError(f"{source}: field 'suffix' must contain {REWARD_TOKEN} exactly once, found it {n} times")
  return Prompts(templates={d: fields[d] for d in DIMENSIONS}, suffix=fields["suffix"], source=source)


def load_prompts(path: str | os.PathLike | None = None) -> Prompts:
  """Reads and validates a prompts file; None gives the project's default rubric."""
  if path is None:
    resource = importlib.resources.files("editreward_jax") / "default_prompts.json"
    text, source = resource.read_text(encoding="utf-8"), "editreward_jax/default_prompts.json"
  else:
    source = paths.expand(os.fspath(path))
    try:
      with open(source, encoding="utf-8") as f:
        text = f.read()
    except (OSError, UnicodeDecodeError) as e:
      raise PromptError(f"{source}: cannot read prompts file: {e}") from e
  try:
    fields = json.loads(text)
  except json.JSONDecodeError as e:
    raise PromptError(f"{source}: invalid JSON: {e}") from e
  return prompts_from_dict(fields, source)
