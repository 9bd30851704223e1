"""Backbone: parity with transformers' Llama, bidirectionality, padding invariance, save/load."""

import torch
from transformers import AutoConfig, AutoModel, LlamaConfig, LlamaModel

from refinery.core.model import LLaDAConfig, LLaDAModel


def tiny(**kw) -> LLaDAConfig:
    base = dict(vocab_size=97, d_model=32, n_layers=2, n_heads=4, mlp_hidden_size=64, rope_theta=500000.0,
                mask_token_id=96, eos_token_id=1)
    base.update(kw)
    return LLaDAConfig(**base)


def llama_twin(model: LLaDAModel) -> LlamaModel:
    c = model.config
    lc = LlamaConfig(vocab_size=c.vocab_size, hidden_size=c.d_model, intermediate_size=c.mlp_hidden_size,
                     num_hidden_layers=c.n_layers, num_attention_heads=c.n_heads, num_key_value_heads=c.n_kv_heads,
                     rms_norm_eps=c.rms_norm_eps, rope_theta=c.rope_theta, max_position_embeddings=256,
                     attention_bias=False, mlp_bias=False, attn_implementation="sdpa")
    llama = LlamaModel(lc).eval()
    sd = {"embed_tokens.weight": model.embed_tokens.weight, "norm.weight": model.norm.weight}
    for i, layer in enumerate(model.layers):
        p = f"layers.{i}."
        sd[p + "input_layernorm.weight"] = layer.attn_norm.weight
        sd[p + "post_attention_layernorm.weight"] = layer.mlp_norm.weight
        for name in ("q_proj", "k_proj", "v_proj", "o_proj"):
            sd[p + f"self_attn.{name}.weight"] = getattr(layer.attn, name).weight
        for name in ("gate_proj", "up_proj", "down_proj"):
            sd[p + f"mlp.{name}.weight"] = getattr(layer.mlp, name).weight
    missing, unexpected = llama.load_state_dict(sd, strict=False)
    assert not unexpected and all("rotary" in m for m in missing), (missing, unexpected)
    return llama


def test_parity_with_llama_without_causal_mask():
    torch.manual_seed(0)
    for kv in (4, 2):
        model = LLaDAModel(tiny(n_kv_heads=kv)).eval()
        llama = llama_twin(model)
        ids = torch.randint(0, 97, (3, 19))
        full = torch.ones(3, 1, 19, 19, dtype=torch.bool)  # a 4D mask disables Llama's causal masking
        with torch.no_grad():
            ours = model(ids).hidden_states
            ref = llama(input_ids=ids, attention_mask=full).last_hidden_state
        assert (ours - ref).abs().max().item() <= 1e-5
        # the twin really is causal without the full mask, so the comparison has teeth
        with torch.no_grad():
            causal = llama(input_ids=ids).last_hidden_state
        assert (ours - causal).abs().max().item() > 1e-3


def test_bidirectional_last_token_changes_first_position():
    torch.manual_seed(1)
    model = LLaDAModel(tiny()).eval()
    ids = torch.randint(2, 90, (1, 12))
    other = ids.clone()
    other[0, -1] = (ids[0, -1] + 1) % 90 + 2
    with torch.no_grad():
        a, b = model(ids).logits[0, 0], model(other).logits[0, 0]
    assert (a - b).abs().max().item() > 1e-6


def test_padding_invariance_left_and_right():
    torch.manual_seed(2)
    model = LLaDAModel(tiny(next_token_head=True)).eval()
    rows = [torch.randint(2, 90, (n,)) for n in (7, 11, 4)]
    width, pad = 11, 1
    for side in ("left", "right"):
        ids = torch.full((3, width), pad)
        mask = torch.zeros(3, width, dtype=torch.long)
        for i, r in enumerate(rows):
            sl = slice(width - len(r), width) if side == "left" else slice(0, len(r))
            ids[i, sl], mask[i, sl] = r, 1
        with torch.no_grad():
            out = model(ids, attention_mask=mask)
            for i, r in enumerate(rows):
                single = model(r[None])
                sl = slice(width - len(r), width) if side == "left" else slice(0, len(r))
                assert torch.allclose(out.logits[i, sl], single.logits[0], atol=1e-5)
                assert torch.allclose(out.next_logits[i, sl], single.next_logits[0], atol=1e-5)


def test_sdpa_matches_eager_backend():
    torch.manual_seed(3)
    model = LLaDAModel(tiny()).eval()
    eager = LLaDAModel(tiny(attn_backend="eager")).eval()
    eager.load_state_dict(model.state_dict())
    ids, mask = torch.randint(0, 97, (2, 9)), torch.tensor([[1] * 9, [0] * 3 + [1] * 6])
    with torch.no_grad():
        assert torch.allclose(model(ids, mask).logits[1, 3:], eager(ids, mask).logits[1, 3:], atol=1e-5)


def test_next_token_head_copy_init():
    model = LLaDAModel(tiny())
    assert model.next_token_head is None and model(torch.zeros(1, 3, dtype=torch.long)).next_logits is None
    model.add_next_token_head(copy_output_head=True)
    assert torch.equal(model.next_token_head.weight, model.lm_head.weight)
    assert model.next_token_head.weight.data_ptr() != model.lm_head.weight.data_ptr()
    assert model.config.next_token_head


def test_sharded_safetensors_round_trip(tmp_path):
    torch.manual_seed(4)
    model = LLaDAModel(tiny(vocab_size=4000, d_model=64, n_heads=4, mlp_hidden_size=128, next_token_head=True))
    model.save_pretrained(tmp_path, max_shard_size="300KB")
    shards = sorted(p.name for p in tmp_path.glob("*.safetensors"))
    assert len(shards) > 1 and (tmp_path / "model.safetensors.index.json").exists()
    assert all((tmp_path / s).stat().st_size <= 1_100_000 for s in shards)
    assert not list(tmp_path.glob("*.bin")) and not list(tmp_path.glob("*.pt"))
    loaded = AutoModel.from_pretrained(tmp_path)
    assert isinstance(loaded, LLaDAModel)
    assert isinstance(AutoConfig.from_pretrained(tmp_path), LLaDAConfig)
    for k, v in model.state_dict().items():
        assert torch.equal(v, loaded.state_dict()[k]), k


def test_bf16_and_gradient_checkpointing():
    torch.manual_seed(5)
    model = LLaDAModel(tiny())
    model.enable_checkpointing()
    model.train()
    ids = torch.randint(0, 97, (2, 8))
    loss = model(ids).logits.float().logsumexp(-1).mean()
    loss.backward()
    assert all(p.grad is not None for p in model.parameters())
    assert any(getattr(m, "gradient_checkpointing", False) for m in model.layers)
    half = LLaDAModel(tiny()).to(torch.bfloat16).eval()
    with torch.no_grad():
        out = half(ids).logits
    assert out.dtype == torch.bfloat16 and torch.isfinite(out.float()).all()


def test_llada_8b_shape_expressible():
    with torch.device("meta"):
        c = LLaDAConfig.llada_8b()
        m = LLaDAModel(c)
    n = sum(p.numel() for p in m.parameters())
    assert c.n_layers == 32 and c.d_model == 4096 and c.vocab_size == 126464 and c.max_sequence_length == 4096
    assert 7.5e9 < n < 8.5e9


@torch.no_grad()
def test_filling_a_kv_cache_leaves_the_forward_unchanged():
    torch.manual_seed(0)
    model = LLaDAModel(tiny(n_kv_heads=2)).eval()
    ids = torch.randint(2, 90, (2, 11))
    mask = torch.ones_like(ids)
    mask[0, :2] = 0
    plain = model(ids, attention_mask=mask)
    cached = model(ids, attention_mask=mask, use_cache=True)
    assert plain.kv_cache is None
    torch.testing.assert_close(cached.logits, plain.logits, rtol=0, atol=0)
    assert [tuple(k.shape) for k in cached.kv_cache.keys] == [(2, 2, 11, 8)] * 2  # (B, n_kv_heads, T, head_dim)
