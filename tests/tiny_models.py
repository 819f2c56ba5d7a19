"""A tiny byte-level tokenizer and a randomly initialised 2-layer Llama, built in memory (no
download), for tests of code that runs a transformers model (scoring, IFD, decoding)."""

from __future__ import annotations

from typing import Any


def byte_tokenizer(bos: bool) -> Any:
    """One token per byte; with ``bos``, a Llama-style BOS before plain text."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "<bos>": 1}
    for char in sorted(pre_tokenizers.ByteLevel.alphabet()):
        vocab[char] = len(vocab)
    inner = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    inner.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    inner.decoder = decoders.ByteLevel()
    if bos:
        inner.post_processor = processors.TemplateProcessing(
            single="<bos> $A", special_tokens=[("<bos>", 1)]
        )
    return PreTrainedTokenizerFast(tokenizer_object=inner, pad_token="<pad>", bos_token="<bos>")


def tiny_llama(tokenizer: Any, max_positions: int) -> Any:
    """A 2-layer Llama over ``tokenizer``'s vocabulary, seeded, in eval mode."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=max_positions,
    )
    return LlamaForCausalLM(config).eval()


def save_tiny_student(folder: Any, tokenizer: Any) -> Any:
    """A seeded 1-layer Llama over ``tokenizer`` (tied embeddings, its special-token ids), saved
    with the tokenizer into ``folder`` as a student a training recipe loads; returns ``folder``."""
    import torch
    import transformers

    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
        num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=256,
        tie_word_embeddings=True, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
    )
    transformers.LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder
