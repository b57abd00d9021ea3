"""A tiny causal LM and tokenizer written to a folder: a fake model for the in-process reader's fast tests."""

from __future__ import annotations

from pathlib import Path

WORDS = ("Query", "Intent", ":", "card", "arrival", "top", "up", "failed", "where", "is", "my", "pin", "blocked",
         "exchange", "rate", "the", "a", "?", "_", "\n", "Classify", "refund", "cash", "fee")


def write_fake_model(folder: Path, seed: int = 0) -> Path:
    """A 2-layer GPT-2 with random weights (seeded) and a word-level tokenizer over :data:`WORDS` (plus ``<unk>``,
    ``<pad>``, ``<bos>`` and ``<eos>``), saved as a transformers model folder."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    vocab = {t: i for i, t in enumerate(["<unk>", "<pad>", "<bos>", "<eos>", *WORDS])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", pad_token="<pad>", bos_token="<bos>",
                                   eos_token="<eos>")
    torch.manual_seed(seed)
    config = GPT2Config(vocab_size=len(vocab), n_positions=512, n_embd=32, n_layer=2, n_head=2, initializer_range=0.5,
                        bos_token_id=2, eos_token_id=3, pad_token_id=1)
    GPT2LMHeadModel(config).save_pretrained(folder)
    fast.save_pretrained(folder)
    return folder
