"""Coverage: Hugging Face transformers models (random init, toy configs) pruned inside a short fit, in local
and global context: BERT, ViT, GPT-2 (classifier and LM head) and a LLaMA-style decoder with grouped-query
attention.

    PYTHONPATH=. python scripts/coverage_transformers.py --contexts local global

Writes ``scripts/results/coverage_transformers.json`` (see ``coverage_common`` for what each status means).
"""

from __future__ import annotations

import transformers as hf
from coverage_common import main

BERT = dict(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64)
GPT2 = dict(vocab_size=100, n_embd=32, n_layer=2, n_head=4, n_positions=64, num_labels=4, pad_token_id=0,
            bos_token_id=1, eos_token_id=2)  # fmt: skip
LLAMA = dict(vocab_size=100, hidden_size=64, num_hidden_layers=2, num_attention_heads=8, num_key_value_heads=2,
             intermediate_size=64, num_labels=4, pad_token_id=0, bos_token_id=1, eos_token_id=2)  # fmt: skip
VIT = dict(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
           intermediate_size=64, num_labels=4)  # fmt: skip

MODELS = {
    "bert": (lambda: hf.BertForSequenceClassification(hf.BertConfig(**BERT, num_labels=4)), -8),
    "vit": (lambda: hf.ViTForImageClassification(hf.ViTConfig(**VIT)), 32),
    "gpt2": (lambda: hf.GPT2ForSequenceClassification(hf.GPT2Config(**GPT2)), -8),
    "gpt2-lm": (lambda: hf.GPT2LMHeadModel(hf.GPT2Config(**GPT2)), -8),
    "llama-gqa": (lambda: hf.LlamaForSequenceClassification(hf.LlamaConfig(**LLAMA)), -8),
}

if __name__ == "__main__":
    main(MODELS, "coverage_transformers.json", __doc__)
