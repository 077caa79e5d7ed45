"""Builds the tiny offline Qwen2-style tokenizer in data/tiny_tokenizer/ (tests and the CPU demo use it).

The tokenizer has the same pipeline as Qwen2.5-VL's (NFC, Qwen2's split regex, byte-level BPE, the same added
special tokens in the same order, a chat template that renders like Qwen2.5-VL's) but only a small vocabulary, learnt
here by a plain-Python byte-pair merge loop over the built-in corpus below. Ties between equally frequent pairs go to
the lexicographically smallest pair, so the output is byte-identical on every run. Byte-level means any text encodes.
`<|Reward|>` is deliberately absent: the project adds it (`editreward_jax.processing.add_reward_token`), like the
reference does to the real Qwen tokenizer.

Load the result with `transformers.AutoTokenizer.from_pretrained(DIR)` (class Qwen2Tokenizer, no network needed).

  python scripts/make_tiny_tokenizer.py [--out=data/tiny_tokenizer]
"""

from __future__ import annotations

import argparse
import collections
import json
import pathlib

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

BASE_VOCAB = 1001  # 256 bytes + 745 merges; with the 22 added tokens and <|Reward|> the table has 1024 rows

# Qwen2's pre-tokenizer split (as in transformers' Qwen2Tokenizer), so words split exactly as with the real tokenizer.
SPLIT_REGEX = (r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"""
               r"""|\s*[\r\n]+|\s+(?!\S)|\s+""")

# Qwen2.5's added tokens in id order (special ones first); ids continue after the BPE vocabulary.
SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
                  "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>",
                  "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>")
PLAIN_ADDED_TOKENS = ("<tool_call>", "</tool_call>", "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>",
                      "<|fim_pad|>", "<|repo_name|>", "<|file_sep|>")

# Renders exactly like Qwen2.5-VL's template: a default system turn when the first message is not one, each message
# as <|im_start|>role\n...<|im_end|>\n, images/videos as vision_start, pad, vision_end (numbered with
# add_vision_id), and <|im_start|>assistant\n as the generation prompt. transformers renders with trim_blocks, so no
# newline is ever written directly after a block tag.
CHAT_TEMPLATE = "".join([
  "{% set counter = namespace(images=0, videos=0) %}",
  "{% for message in messages %}",
  "{% if loop.first and message.role != 'system' %}",
  "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n",
  "{% endif %}",
  "<|im_start|>{{ message.role }}\n",
  "{% if message.content is string %}{{ message.content }}{% else %}{% for part in message.content %}",
  "{% if part.type == 'image' or 'image' in part or 'image_url' in part %}",
  "{% set counter.images = counter.images + 1 %}",
  "{% if add_vision_id %}Picture {{ counter.images }}: {% endif %}",
  "<|vision_start|><|image_pad|><|vision_end|>",
  "{% elif part.type == 'video' or 'video' in part %}",
  "{% set counter.videos = counter.videos + 1 %}",
  "{% if add_vision_id %}Video {{ counter.videos }}: {% endif %}",
  "<|vision_start|><|video_pad|><|vision_end|>",
  "{% elif 'text' in part %}{{ part.text }}{% endif %}",
  "{% endfor %}{% endif %}",
  "<|im_end|>\n",
  "{% endfor %}",
  "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}",
])

# Original text in the register of editing instructions and rubrics, so that prompts tokenize into short sequences.
CORPUS = """\
You are a helpful assistant. The user shows two pictures: the source image and the edited image.
Look at the first image, then at the second image, and judge how well the edit follows the instruction.
Instruction following means the requested change is made completely, in the right place, at the right strength.
Visual quality means the result looks natural: consistent light, shadows, perspective, sharp detail and clean edges.
Rate the edited image for this dimension. Give a score from one to ten, where ten is the best possible edit.
Replace the red car with a blue bicycle. Remove the man in the background. Add a small dog next to the woman.
Change the sky to a sunset with orange and pink clouds. Make the photo look like a watercolor painting.
Turn the cat into a tiger. Put a hat on the girl. Change the color of the wall to green.
Add snow to the street and make it look like winter. Remove the text from the sign.
Make the person smile. Change the season to autumn, with yellow and brown leaves on the trees.
Replace the background with a beach at noon. Add a rainbow over the mountains. Make the water look calm.
Convert the picture to black and white, but keep the flowers in color. Zoom out and show the whole building.
Let the boy hold an umbrella in the rain. Give the old house a new roof and fresh white paint.
Edit only what the instruction asks for; keep the identity, the pose, the layout and the background unchanged.
Penalise edits that ignore the request, change the wrong object, or add things nobody asked for.
Penalise artifacts: blur, noise, seams, smears, distorted faces, extra fingers, broken text, color shifts.
A good edit is faithful to the source where no change was requested, and convincing where it was.
The quick brown fox jumps over the lazy dog. She sells sea shells by the sea shore on a sunny day.
People, animals, food, streets, rooms, cities, forests, rivers, lakes, fields, roads and windows.
Photographs, drawings, paintings, cartoons, renders, sketches, posters, logos and screenshots.
Left, right, top, bottom, front, behind, above, below, inside, outside, near, far, large, small.
Colors: red, orange, yellow, green, blue, purple, pink, brown, black, white, gray, gold and silver.
Numbers: 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 12, 24, 100, 448, 1024, 2025.
It's, don't, isn't, we're, they've, I'm, you'll, he'd; "quotes", (brackets), [lists], {braces}: colons; dashes - and?
The score should reflect human preference: which of two edits would most people choose as the better one?
Judge the whole picture carefully before deciding. Compare the edited result against the original photograph.
Objects must keep their shape, size and texture unless the instruction says otherwise; faces should stay recognizable.
Check whether every part of the request was done, whether anything was missed, and whether extra changes appeared.
Good lighting, believable reflections, correct scale and proportion, smooth gradients and accurate materials matter.
Poor results show halos around pasted objects, melted hands, repeated patterns, washed out colors or jagged outlines.
An instruction may ask to add, remove, replace, move, resize, recolor or restyle something, or to change the mood.
Sometimes the request concerns text in the scene: write a word on the board, or translate the caption into French.
Style transfer keeps the content but changes the look: oil painting, pencil sketch, pixel art, anime, vintage film.
Background edits keep the subject intact while swapping the surroundings, for example a desert, a library or space.
Portrait edits change hair, clothing, glasses, makeup, age or expression while the person remains the same person.
Local edits touch one region only; global edits change the entire frame, such as brightness, contrast or weather.
When unsure, prefer the edit that a careful human reviewer would accept without asking for another attempt.
"""


def byte_alphabet() -> list[str]:
  """GPT-2's byte-to-printable-character map, indexed by byte value (what ByteLevel pre-tokenization emits)."""
  printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
  chars, extra = {}, 0
  for b in range(256):
    if b in printable:
      chars[b] = chr(b)
    else:
      chars[b] = chr(256 + extra)
      extra += 1
  return [chars[b] for b in range(256)]


def pipeline(tok: Tokenizer) -> Tokenizer:
  tok.normalizer = normalizers.NFC()
  tok.pre_tokenizer = pre_tokenizers.Sequence([
    pre_tokenizers.Split(Regex(SPLIT_REGEX), behavior="isolated", invert=False),
    pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
  ])
  tok.decoder = decoders.ByteLevel()
  tok.post_processor = processors.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)
  return tok


def learn_merges(words: collections.Counter[str], n_merges: int) -> list[tuple[str, str]]:
  """Greedy BPE: repeatedly merge the most frequent adjacent pair (ties: smallest pair)."""
  split = {w: list(w) for w in words}
  merges = []
  while len(merges) < n_merges:
    pairs: collections.Counter[tuple[str, str]] = collections.Counter()
    for w, symbols in split.items():
      for pair in zip(symbols, symbols[1:]):
        pairs[pair] += words[w]
    if not pairs:
      raise ValueError(f"corpus too small: only {len(merges)} merges possible, {n_merges} wanted")
    best = min(pairs, key=lambda p: (-pairs[p], p))
    merges.append(best)
    for symbols in split.values():
      i = 0
      while i < len(symbols) - 1:
        if (symbols[i], symbols[i + 1]) == best:
          symbols[i:i + 2] = [best[0] + best[1]]
        i += 1
  return merges


def build() -> Tokenizer:
  splitter = pipeline(Tokenizer(models.BPE()))
  words: collections.Counter[str] = collections.Counter()
  for line in CORPUS.splitlines(keepends=True):
    text = splitter.normalizer.normalize_str(line)
    words.update(piece for piece, _ in splitter.pre_tokenizer.pre_tokenize_str(text))
  merges = learn_merges(words, BASE_VOCAB - 256)
  vocab = {c: i for i, c in enumerate(byte_alphabet())}
  for a, b in merges:
    vocab[a + b] = len(vocab)
  tok = pipeline(Tokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=False, byte_fallback=False)))
  tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS])
  tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in PLAIN_ADDED_TOKENS])
  return tok


def tokenizer_config() -> dict:
  return {
    "tokenizer_class": "Qwen2Tokenizer",
    "chat_template": CHAT_TEMPLATE,
    "bos_token": None,
    "eos_token": "<|im_end|>",
    "pad_token": "<|endoftext|>",
    "unk_token": None,
    "extra_special_tokens": list(SPECIAL_TOKENS[1:]),
    "add_prefix_space": False,
    "clean_up_tokenization_spaces": False,
    "split_special_tokens": False,
    "errors": "replace",
    "model_max_length": 32768,
  }


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
  parser.add_argument("--out", type=pathlib.Path, help="output directory",
                      default=pathlib.Path(__file__).resolve().parents[1] / "data" / "tiny_tokenizer")
  out = parser.parse_args().out
  out.mkdir(parents=True, exist_ok=True)
  tok = build()
  (out / "tokenizer.json").write_text(tok.to_str(pretty=True) + "\n", encoding="utf-8")
  (out / "tokenizer_config.json").write_text(json.dumps(tokenizer_config(), indent=2, ensure_ascii=False) + "\n",
                                             encoding="utf-8")
  print(f"wrote {out}: {tok.get_vocab_size()} tokens ({BASE_VOCAB} BPE + {tok.get_vocab_size() - BASE_VOCAB} added)")


if __name__ == "__main__":
  main()
