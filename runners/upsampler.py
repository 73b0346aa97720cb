"""Prompt upsampling: expand a prompt into a more descriptive one before generation.

Two upsamplers with one interface (`upsampler(prompt) -> str`), chosen by
settings.prompt_upsampler ("auto": "llm" in `full`, "rules" in `tiny`):

- LLMUpsampler: a small local instruct model (models/manifest.py "prompt-upsampler") rewrites
  the prompt. Greedy decoding, so the same prompt always expands the same way.
- RuleUpsampler: NOT a language model. A deterministic expander for the `tiny` profile and for
  machines without the model: it keeps the prompt as written and appends one descriptive
  clause from each of a few fixed lists (lighting, camera, detail, mood). Which clause is picked
  from each list is decided by a hash of the prompt's words (lowercased, punctuation dropped),
  so the same words always get the same clauses, and other words usually get others.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Protocol

import torch

from models.store import require_model
from runners.device import load_onto
from settings import Settings

# One list per aspect the expander adds; each prompt gets one clause from each list.
CLAUSES: tuple[tuple[str, ...], ...] = (
    (
        "soft natural lighting",
        "warm golden-hour light",
        "diffuse overcast light",
        "dramatic side lighting",
        "bright even studio lighting",
    ),
    (
        "shot on a 35mm lens",
        "wide-angle composition",
        "eye-level medium shot",
        "shallow depth of field",
        "balanced centered framing",
    ),
    (
        "highly detailed textures",
        "crisp fine detail",
        "realistic materials",
        "rich color depth",
        "clean sharp focus",
    ),
    (
        "calm atmosphere",
        "vivid and lively mood",
        "quiet understated mood",
        "cinematic atmosphere",
        "inviting cozy feel",
    ),
)
CLAUSE_SEPARATOR = ", "
_WORD = re.compile(r"[^\W_]+")  # letters and digits, in any script

# The instruction the LLM upsampler follows.
SYSTEM_PROMPT = (
    "You rewrite prompts for an image generator. Keep the subject, layout and every detail the "
    "user gave; add concrete visual detail about lighting, materials, colors and camera. "
    "Answer with the rewritten prompt only, one paragraph, at most 60 words."
)


class Upsampler(Protocol):
    def __call__(self, prompt: str) -> str: ...


class RuleUpsampler:
    """Appends one clause per list of CLAUSES, picked by a hash of the prompt's words."""

    def __call__(self, prompt: str) -> str:
        words = " ".join(_WORD.findall(prompt.lower()))
        clauses = [
            options[_pick(f"{index}:{words}", len(options))]
            for index, options in enumerate(CLAUSES)
        ]
        base = prompt.strip().rstrip(",.;: ")
        return CLAUSE_SEPARATOR.join([base, *clauses]) if base else CLAUSE_SEPARATOR.join(clauses)


def _pick(key: str, count: int) -> int:
    # sha256, not hash(): Python's string hash changes from process to process.
    return int.from_bytes(hashlib.sha256(key.encode("utf-8")).digest()[:8], "big") % count


class LLMUpsampler:
    """Rewrites the prompt with a local causal LM through its chat template."""

    def __init__(
        self, model_dir: Path, device: torch.device, dtype: torch.dtype, max_new_tokens: int
    ) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.device = device
        self.max_new_tokens = max_new_tokens
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
        self.model = AutoModelForCausalLM.from_pretrained(
            model_dir, dtype=dtype, **load_onto(device)
        ).eval()

    @torch.inference_mode()
    def __call__(self, prompt: str) -> str:
        messages = [
            {"role": "system", "content": SYSTEM_PROMPT},
            {"role": "user", "content": prompt},
        ]
        inputs = self.tokenizer.apply_chat_template(
            messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
        ).to(self.device)
        output = self.model.generate(
            **inputs,
            max_new_tokens=self.max_new_tokens,
            do_sample=False,  # greedy: the same prompt always expands the same way
            pad_token_id=self.tokenizer.pad_token_id or self.tokenizer.eos_token_id,
        )
        new_tokens = output[0, inputs["input_ids"].shape[1] :]
        text = " ".join(self.tokenizer.decode(new_tokens, skip_special_tokens=True).split())
        # An empty answer would silently drop the user's prompt: keep theirs instead.
        return text or prompt


def make_upsampler(settings: Settings, device: torch.device, dtype: torch.dtype) -> Upsampler:
    if settings.resolved_prompt_upsampler() == "rules":
        return RuleUpsampler()
    model_dir = require_model(settings, "prompt-upsampler")
    return LLMUpsampler(model_dir, device, dtype, settings.upsampler_max_new_tokens)
