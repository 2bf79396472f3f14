"""Hugging Face transformers models, random init at toy sizes, pruned inside ``trainer.fit`` in both contexts:
BERT and ViT (separate q/k/v), GPT-2 (fused ``c_attn`` Conv1D; classifier and LM head), a LLaMA-style decoder
with grouped-query attention and rotary embeddings. Every test runs the checks of ``zoo.prune_in_fit``."""

from __future__ import annotations

import pytest
import torch
import transformers as hf
import zoo

from lightning_prune import count_macs_params, layer_report
from lightning_prune.engine.attention import width

BERT = dict(vocab_size=zoo.VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64)


def bert() -> torch.nn.Module:
    return hf.BertForSequenceClassification(hf.BertConfig(**BERT, num_labels=zoo.NUM_CLASSES))


def vit() -> torch.nn.Module:
    config = hf.ViTConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                          intermediate_size=64, num_labels=zoo.NUM_CLASSES)  # fmt: skip
    return hf.ViTForImageClassification(config)


def gpt2_config() -> hf.GPT2Config:
    return hf.GPT2Config(vocab_size=zoo.VOCAB, n_embd=32, n_layer=2, n_head=4, n_positions=64,
                         num_labels=zoo.NUM_CLASSES, pad_token_id=0, bos_token_id=1, eos_token_id=2)  # fmt: skip


def gpt2() -> torch.nn.Module:
    return hf.GPT2ForSequenceClassification(gpt2_config())


def gpt2_lm() -> torch.nn.Module:
    return hf.GPT2LMHeadModel(gpt2_config())


def llama() -> torch.nn.Module:
    config = hf.LlamaConfig(vocab_size=zoo.VOCAB, hidden_size=64, num_hidden_layers=2, num_attention_heads=8,
                            num_key_value_heads=2, intermediate_size=64, num_labels=zoo.NUM_CLASSES, pad_token_id=0,
                            bos_token_id=1, eos_token_id=2)  # fmt: skip
    return hf.LlamaForSequenceClassification(config)


TOKENS = ("input_ids", (8,))
IMAGES = ("pixel_values", (3, 32, 32))
FAMILIES = {
    "bert": (bert, TOKENS),
    "vit": (vit, IMAGES),
    "gpt2": (gpt2, TOKENS),
    "gpt2-lm": (gpt2_lm, TOKENS),
    "llama-gqa": (llama, TOKENS),
}


def attention_modules(net: torch.nn.Module) -> list[torch.nn.Module]:
    names = ("BertSelfAttention", "ViTAttention", "GPT2Attention", "LlamaAttention")
    return [m for m in net.modules() if type(m).__name__ in names]


def projections(attn: torch.nn.Module) -> tuple[int, int, int, int]:
    """(query width, key width, value width, output-projection input width)."""
    if hasattr(attn, "c_attn"):
        q = width(attn.c_attn) // 3
        return q, q, q, width(attn.c_proj, out=False)
    if hasattr(attn, "query"):
        return attn.query.out_features, attn.key.out_features, attn.value.out_features, attn.query.out_features
    return attn.q_proj.out_features, attn.k_proj.out_features, attn.v_proj.out_features, attn.o_proj.in_features


def heads_and_dim(attn: torch.nn.Module) -> tuple[int, int]:
    heads = getattr(attn, "num_attention_heads", getattr(attn, "num_heads", None))
    head_dim = getattr(attn, "attention_head_size", getattr(attn, "head_dim", None))
    if heads is None:  # LLaMA keeps no head count: the query width over the head size
        heads = attn.q_proj.out_features // head_dim
    return heads, head_dim


@pytest.mark.parametrize("context", ["local", "global"])
@pytest.mark.parametrize("family", list(FAMILIES))
def test_hugging_face_model_prunes_inside_a_fit(family: str, context: str, tmp_path) -> None:
    make, (key, shape) = FAMILIES[family]
    dense = [(heads_and_dim(a), projections(a)) for a in attention_modules(make())]
    module, callback, found = zoo.prune_in_fit(make, key, shape, context, tmp_path)
    net = module.net
    left_out = [w for w in found["warnings"] if "PruningCallback" in w and "not fine-tuned" not in w]
    assert not left_out, found["warnings"]  # nothing left out
    assert callback.left_out == [] and callback.unsafe_ignored == []
    blocks = callback.pruner.blocks
    assert len(blocks) == 2 and all(b.unsupported is None for b in blocks)
    pruned_attention = False
    for attn, ((heads0, dim0), (q0, k0, _, _)) in zip(attention_modules(net), dense, strict=True):
        heads, head_dim = heads_and_dim(attn)
        q, k, v, o = projections(attn)
        # whole heads went, or every head lost the same dims: the stored sizes say so
        assert q == o == heads * head_dim and k == v
        if hasattr(attn, "all_head_size"):
            assert attn.all_head_size == q
        if hasattr(attn, "split_size"):
            assert attn.split_size == q
        if family == "llama-gqa":  # rotary embeddings: only whole heads, query heads grouped over their kv head
            assert head_dim == dim0 and k == (heads // attn.num_key_value_groups) * head_dim
            assert attn.num_key_value_groups == heads0 // (k0 // dim0)  # 4 query heads per kv head, as built
        pruned_attention |= q < q0
    assert pruned_attention
    # the hidden size (the residual stream) is pruned consistently: every block reads the embedding width
    embed = net.get_input_embeddings()
    embeddings = embed.weight.shape[1] if hasattr(embed, "weight") else embed.projection.out_channels
    assert {b.kv_left >= 1 for b in blocks} == {True}
    assert {width(module.get_submodule(b.q), out=False) for b in blocks} == {embeddings}
    if context == "local":  # every layer agrees: the config says so
        assert net.config.hidden_size == embeddings < 32 if family != "llama-gqa" else embeddings < 64
        heads = {heads_and_dim(a)[0] for a in attention_modules(net)}
        assert net.config.num_attention_heads == heads.pop()
    if family in ("gpt2", "gpt2-lm", "llama-gqa"):
        assert net.config.use_cache is True  # the KV cache was off while tracing only
    # the pruned model runs at other sequence lengths and image sizes
    with torch.no_grad():
        net.eval()
        if key == "input_ids":
            for length in (3, 17):
                assert module.logits(net(input_ids=torch.randint(0, zoo.VOCAB, (2, length)))).shape == (2, 4)
        else:
            out = net(pixel_values=torch.randn(2, 3, 48, 48), interpolate_pos_encoding=True)
            assert module.logits(out).shape == (2, 4)


def test_gpt2_conv1d_is_pruned_and_counted_in_macs(tmp_path) -> None:
    import torch_pruning as tp
    from transformers.pytorch_utils import Conv1D

    tp.utils.op_counter.MODULES_MAPPING.pop(Conv1D, None)  # as in a fresh process
    dense = gpt2_lm()
    lm_head = 8 * 32 * zoo.VOCAB
    assert count_macs_params(dense, {"input_ids": torch.zeros(1, 8, dtype=torch.long)})[0] > 4 * lm_head
    module, callback, _ = zoo.prune_in_fit(gpt2_lm, *TOKENS, "local", tmp_path)
    net = module.net
    mlp = net.transformer.h[0].mlp
    assert mlp.c_fc.nf < 128 and mlp.c_fc.nf == mlp.c_proj.weight.shape[0]  # the MLP's hidden width went
    rows = {row.layer: row for row in layer_report(module, callback.example_inputs)}
    assert rows["net.transformer.h.0.mlp.c_fc"].macs > 0  # Conv1D is counted, not treated as free
    conv1d = sum(r.macs for name, r in rows.items() if name.endswith(("c_fc", "c_proj", "c_attn")))
    assert conv1d > rows["net.lm_head"].macs
    # the LM head is still tied to the input embedding
    assert net.lm_head.weight is net.transformer.wte.weight


def test_bert_can_lose_whole_heads(tmp_path) -> None:
    module, _, _ = zoo.prune_in_fit(
        bert, *TOKENS, "local", tmp_path, pruner_kwargs={"prune_num_heads": True, "head_pruning_ratio": 0.5}
    )
    for attn in attention_modules(module.net):
        assert attn.num_attention_heads == 2 and attn.query.out_features == 2 * attn.attention_head_size
    assert module.net.config.num_attention_heads == 2


def test_example_inputs_with_attention_mask_and_position_ids(tmp_path) -> None:
    # dict example inputs: the mask and the positions are traced along
    inputs = {"input_ids": torch.randint(0, zoo.VOCAB, (1, 8)), "attention_mask": torch.ones(1, 8, dtype=torch.long),
              "position_ids": torch.arange(8)[None]}  # fmt: skip
    module, callback, _ = zoo.prune_in_fit(llama, *TOKENS, "local", tmp_path, example_inputs=inputs)
    assert set(callback.example_inputs) == set(inputs)
