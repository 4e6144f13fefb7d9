"""An offline byte-level BPE tokenizer with the Qwen2 pipeline, special tokens and chat template.

We cannot download Qwen's vocabulary, so we train a small BPE (<= 4k tokens) on text the project generates
itself (prompt templates plus seeded sentences in the vocabulary of our traces). Training on our own text, not on
files of the local Python install, keeps the tokenizer byte-identical across machines, and a domain vocabulary
keeps traces short, so the tiny model learns the format in few SFT steps. The pre-tokenizer is Qwen2's split
regex + byte level, so every string round-trips exactly.
"""

from __future__ import annotations

import json
import random
from importlib import resources

from tokenizers import Regex, Tokenizer, decoders, normalizers, pre_tokenizers, trainers
from tokenizers.models import BPE
from transformers import AddedToken, Qwen2Tokenizer

SPECIAL_TOKENS = [  # Qwen2.5-VL's, in its id order (ids 0..13 here)
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
    "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>",
    "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>",
]  # fmt: skip

# The Qwen2.5-VL-Instruct chat template (system default, vision placeholders, generation prompt).
CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}{% if add_vision_id %}Picture {{ image_count.value }}: "
    "{% endif %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}{% if add_vision_id %}Video {{ video_count.value }}: "
    "{% endif %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
PRETOKENIZE_REGEX = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"""
    r"""|\s*[\r\n]+|\s+(?!\S)|\s+"""
)

_COLOURS = ["red", "green", "blue", "yellow", "purple", "orange", "white", "black", "cyan", "pink", "grey"]
_SHAPES = ["circle", "square", "triangle", "star", "rectangle", "ball", "box", "person", "car", "dog"]
_VERB_STEMS = ["appear", "leave", "move", "enter", "exit", "turn", "change", "cross", "stop", "return", "show",
               "disappear", "pass", "slide", "grow", "shrink", "follow", "watch", "answer", "count", "happen"]
_VERBS = [v + suffix for v in _VERB_STEMS for suffix in ("", "s", "ed", "ing")]  # crude inflections are fine
_WORDS = (
    "the a an of in on at to from then after before first last next while during video frame segment "
    "scene left right top bottom middle centre screen object shape colour color answer question option "
    "which what how many when where why is are was were it its this that these those so because therefore "
    "let me think wait hmm look again see evidence clue window time caption analysis correct wrong earlier "
    "later so far now both only one two three four five six seven eight nine ten zero count number direction "
    "background moving static changed into becomes remains visible hidden quickly slowly between and or not"
).split()


def _clock(seconds: int) -> str:
    return f"{seconds // 60:02d}:{seconds % 60:02d}"


def training_corpus(num_lines: int = 6000, seed: int = 1234) -> list[str]:
    """Deterministic text in the language of prompts and traces: tags, clocks, colours, shapes, options."""
    rng = random.Random(seed)
    lines = [resources.files("vt_ray.prompts").joinpath(n).read_text() for n in ("system.txt", "question.txt")]
    for _ in range(num_lines):
        c, v = rng.choice(_COLOURS), rng.choice(_VERBS)
        s = rng.choice(_SHAPES) + rng.choice(("", "", "s"))
        a = rng.randrange(0, 60)
        b = a + rng.randrange(1, 20)
        filler = " ".join(rng.choice(_WORDS) for _ in range(rng.randrange(4, 14)))
        kind = rng.randrange(4)
        if kind == 0:
            lines.append(
                f"<time>{_clock(a)}-{_clock(b)}</time> <caption>A {c} {s} {v} from the {rng.choice(_WORDS)}.</caption> "
                f"<think>{filler}.</think>"
            )
        elif kind == 1:
            letters = "ABCD"
            opts = "\n".join(f"{letters[i]}. {rng.choice(_COLOURS)} {rng.choice(_SHAPES)}" for i in range(4))
            lines.append(f"Which {s} {v} after the {c} {rng.choice(_SHAPES)}?\n{opts}\n"
                         f"<answer>{rng.choice(letters)}</answer>")
        elif kind == 2:
            lines.append(f"{a}.{rng.randrange(10)}-{b}.{rng.randrange(10)} seconds: "
                         f"{filler}, {c} {s} {v}. Hmm, {filler}.")
        else:
            lines.append(f"{filler.capitalize()}? Let me think. The {c} {s} {v} at {_clock(a)}, so {filler}.")
    return lines


def build_tokenizer(vocab_size: int = 4096) -> Qwen2Tokenizer:
    """A ``Qwen2Tokenizer`` (the real class) over an offline-trained BPE; deterministic."""
    bpe = Tokenizer(BPE())
    bpe.normalizer = normalizers.NFC()
    bpe.decoder = decoders.ByteLevel()
    bpe.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    bpe.train_from_iterator(training_corpus(), trainer=trainer)
    model = json.loads(bpe.to_str())["model"]
    # Qwen2Tokenizer wants merges as tuples; tokenizers serialises them as lists or "a b" strings by version.
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in model["merges"]]
    tok = Qwen2Tokenizer(
        vocab=model["vocab"],
        merges=merges,  # type: ignore[arg-type]  # tuples, see above (the stub says str | list[str])
        unk_token=None,  # type: ignore[arg-type]  # byte-level BPE: no unknown token
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        model_max_length=32768,
    )
    tok.add_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS], special_tokens=True)
    tok.chat_template = CHAT_TEMPLATE
    return tok
