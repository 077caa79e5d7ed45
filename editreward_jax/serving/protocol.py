"""The reward server's JSON protocol: request parsing and validation, strict before any pixel is decoded.

Request `{"items": [{"id", "instruction", "source_image", "edited_image"}, ...]}`; an image is a base64 string (a
`data:image/...;base64,` prefix allowed) of PNG, JPEG or WebP bytes, or `{"path": "/abs/file.png"}` when the server
was started with allowed path roots. A problem with the request as a whole (malformed JSON, no `items`, too many
items, a missing or repeated id) is a `RequestError`; a problem with one item is an `ItemError` naming its id and
field, and the request's other items are still scored.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import json
import os
from typing import Any, Sequence

IMAGE_FIELDS = ("source_image", "edited_image")
_DATA_URL = "data:image/"
_MAGIC = {"png": (b"\x89PNG\r\n\x1a\n",), "jpeg": (b"\xff\xd8\xff",)}  # WebP: RIFF....WEBP, checked below


class RequestError(Exception):
  """The whole request is rejected: HTTP `status`, and the field the message is about."""

  def __init__(self, status: int, field: str, message: str):
    super().__init__(f"{field}: {message}")
    self.status, self.field, self.message = status, field, message

  def to_json(self) -> dict[str, Any]:
    return {"id": None, "field": self.field, "message": self.message}


@dataclasses.dataclass(frozen=True)
class ItemError:
  """One item that cannot be scored (it is reported, never scored as 0)."""
  id: str | int
  field: str
  message: str
  index: int = -1  # the item's place in the request: errors are listed in request order

  def to_json(self) -> dict[str, Any]:
    return {"id": self.id, "field": self.field, "message": self.message}


@dataclasses.dataclass(frozen=True)
class Item:
  """A validated item: images are encoded bytes (format checked) or allowed absolute paths."""
  index: int
  id: str | int
  instruction: str
  source_image: bytes | str
  edited_image: bytes | str


@dataclasses.dataclass(frozen=True)
class Limits:
  max_items: int = 64
  max_image_bytes: int = 16 << 20
  allow_paths: tuple[str, ...] = ()  # real paths of the roots file paths may lie under; empty: no paths


def parse_request(body: bytes, limits: Limits) -> tuple[list[Item], list[ItemError]]:
  """The items to score and those already failed, in request order; raises RequestError."""
  try:
    request = json.loads(body)
  except (UnicodeDecodeError, json.JSONDecodeError) as e:
    raise RequestError(400, "body", f"malformed JSON: {e}") from None
  if not isinstance(request, dict):
    raise RequestError(400, "body", f"expected a JSON object with an 'items' list, got {type(request).__name__}")
  items = request.get("items")
  if not isinstance(items, list) or not items:
    raise RequestError(400, "items", f"expected a non-empty list of items, got {_kind(items)}")
  if len(items) > limits.max_items:
    raise RequestError(413, "items", f"{len(items)} items, more than max_items={limits.max_items}")
  parsed, errors, seen = [], [], set()
  for k, item in enumerate(items):
    if not isinstance(item, dict):
      raise RequestError(400, f"items[{k}]", f"expected an object, got {_kind(item)}")
    item_id = item.get("id")
    if isinstance(item_id, bool) or not isinstance(item_id, (str, int)):
      raise RequestError(400, f"items[{k}].id", f"expected a string or integer id, got {_kind(item_id)}")
    if item_id in seen:
      raise RequestError(400, f"items[{k}].id", f"id {item_id!r} appears twice in the request")
    seen.add(item_id)
    try:
      instruction = item.get("instruction")
      if not isinstance(instruction, str) or not instruction.strip():
        raise _Bad("instruction", f"expected a non-empty string, got {_kind(instruction)}")
      images = [decode_image(item.get(f), f, limits) for f in IMAGE_FIELDS]
    except _Bad as bad:
      errors.append(ItemError(item_id, bad.field, bad.message, k))
      continue
    parsed.append(Item(k, item_id, instruction, *images))
  return parsed, errors


class _Bad(Exception):
  def __init__(self, field: str, message: str):
    super().__init__(message)
    self.field, self.message = field, message


def decode_image(value: Any, field: str, limits: Limits) -> bytes | str:
  """Encoded image bytes from strict base64, or an allowed path; the format (PNG/JPEG/WebP) is checked from the
  first bytes. Size and decodability are judged later from the header (`Scorer._example`)."""
  if isinstance(value, dict) and set(value) == {"path"}:
    return _allowed_path(value["path"], field, limits)
  if not isinstance(value, str) or not value:
    raise _Bad(field, f"expected a base64 string or {{\"path\": ...}}, got {_kind(value)}")
  if value.startswith(_DATA_URL):
    head, sep, value = value.partition(",")
    if not sep or not head.endswith(";base64"):
      raise _Bad(field, "a data URL must be data:image/<format>;base64,<data>")
  if len(value) // 4 * 3 > limits.max_image_bytes:
    raise _Bad(field, f"more than max_image_bytes={limits.max_image_bytes} once decoded")
  try:
    data = base64.b64decode(value, validate=True)
  except (binascii.Error, ValueError) as e:
    raise _Bad(field, f"invalid base64: {e}") from None
  _check_format(data[:12], field)
  return data


def _allowed_path(path: Any, field: str, limits: Limits) -> str:
  if not limits.allow_paths:
    raise _Bad(field, "file paths are not allowed by this server (send base64, or start it with --allow_paths=DIR)")
  if not isinstance(path, str) or not os.path.isabs(path):
    raise _Bad(field, f"expected an absolute path, got {path!r}")
  real = os.path.realpath(path)
  if not any(os.path.commonpath([real, root]) == root for root in limits.allow_paths):
    raise _Bad(field, f"{path} is not under an allowed path root")
  try:
    size = os.path.getsize(real)
    with open(real, "rb") as f:
      head = f.read(12)
  except OSError as e:
    raise _Bad(field, f"cannot read {path}: {e.strerror}") from None
  if size > limits.max_image_bytes:
    raise _Bad(field, f"{path} is {size} bytes, more than max_image_bytes={limits.max_image_bytes}")
  _check_format(head, field)
  return real


def _check_format(head: bytes, field: str) -> None:
  if any(head.startswith(m) for magics in _MAGIC.values() for m in magics):
    return
  if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
    return
  raise _Bad(field, "not a PNG, JPEG or WebP image")


def allowed_roots(paths: Sequence[str]) -> tuple[str, ...]:
  """--allow_paths values as real directory paths; raises ValueError for one that is not a directory."""
  roots = []
  for p in paths:
    if not os.path.isdir(p):
      raise ValueError(f"--allow_paths: {p} is not a directory")
    roots.append(os.path.realpath(p))
  return tuple(roots)


def _kind(value: Any) -> str:
  return "nothing" if value is None else type(value).__name__
