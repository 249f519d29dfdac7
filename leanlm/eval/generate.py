"""Batched generation through the model's chat template (greedy by default, sampling for evolve)."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from tqdm.auto import tqdm


@dataclass(frozen=True)
class GenerationConfig:
    max_new_tokens: int = 32
    batch_size: int = 16
    temperature: float = 0.0      # 0 = greedy
    top_p: float = 1.0
    num_samples: int = 1          # answers per prompt (needs temperature > 0 to differ)
    chat: bool | None = None      # None: use the chat template when the tokenizer has one
    seed: int = 0
    share_prompt: bool = True     # k samples: encode each prompt once and copy its KV cache k times


def format_prompt(tok, prompt: str, chat: bool | None = None) -> str:
    use_chat = bool(getattr(tok, "chat_template", None)) if chat is None else chat
    if not use_chat:
        return prompt
    return tok.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                   add_generation_prompt=True)


@torch.no_grad()
def generate(model, tok, prompts: list[str], cfg: GenerationConfig = GenerationConfig(),
             progress: bool = True, desc: str = "generate") -> list[list[str]]:
    """For each prompt, ``cfg.num_samples`` completions (new text only). Order follows ``prompts``."""
    device = next(model.parameters()).device
    texts = [format_prompt(tok, p, cfg.chat) for p in prompts]
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))  # similar lengths batch together
    out: list[list[str]] = [[] for _ in prompts]
    sample = cfg.temperature > 0
    gen = torch.Generator(device="cpu").manual_seed(cfg.seed)
    bar = tqdm(total=len(prompts), desc=desc, unit="prompt", disable=not progress, leave=False)
    for i in range(0, len(order), cfg.batch_size):
        idx = order[i:i + cfg.batch_size]
        enc = tok([texts[j] for j in idx], return_tensors="pt", padding=True, add_special_tokens=False).to(device)
        kwargs = dict(max_new_tokens=cfg.max_new_tokens, pad_token_id=tok.pad_token_id,
                      eos_token_id=tok.eos_token_id, num_return_sequences=cfg.num_samples)
        if sample:
            torch.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=gen)))
            kwargs.update(do_sample=True, temperature=cfg.temperature, top_p=cfg.top_p, top_k=0)
        else:
            kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        if cfg.num_samples > 1 and cfg.share_prompt and enc["input_ids"].shape[1] > 1:
            seqs = _generate_shared(model, enc, cfg.num_samples, kwargs)
        else:
            seqs = model.generate(**enc, **kwargs)
        new = seqs[:, enc["input_ids"].shape[1]:]
        decoded = tok.batch_decode(new, skip_special_tokens=True)
        for k, j in enumerate(idx):
            out[j] = decoded[k * cfg.num_samples:(k + 1) * cfg.num_samples]
        bar.update(len(idx))
    bar.close()
    return out


def _generate_shared(model, enc: dict, k: int, kwargs: dict) -> torch.Tensor:
    """``k`` samples per row with the prompt encoded once: all but the prompt's last token go through the
    model a single time, the KV cache is repeated ``k`` times in the batch dimension, and ``generate``
    continues from it (it only encodes the uncached last token). Without this, ``num_return_sequences``
    repeats the whole prompt ``k`` times before encoding it - on a CPU most of the sampling time when the
    prompt is longer than the answer. Same distribution as the plain path; rows as ``num_return_sequences``
    orders them (each prompt's k samples together)."""
    from transformers import DynamicCache

    ids, mask = enc["input_ids"], enc["attention_mask"]
    cache = DynamicCache(config=model.config)
    pos = (mask[:, :-1].cumsum(-1) - 1).clamp(min=0)      # left padding: positions as generate computes them
    model(input_ids=ids[:, :-1], attention_mask=mask[:, :-1], position_ids=pos, cache=cache, use_cache=True)
    cache.batch_repeat_interleave(k)
    kwargs = {**kwargs, "num_return_sequences": 1}
    return model.generate(input_ids=ids.repeat_interleave(k, 0), attention_mask=mask.repeat_interleave(k, 0),
                          cache=cache, **kwargs)
