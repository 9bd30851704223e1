"""Checkpoint conversion: our random tiny model written in LLaDA / ME-DLM naming converts back bit-exactly."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from refinery.core.checkpoint import load_model
from refinery.core.convert import convert_checkpoint, detect_layout, map_key, parse_size
from refinery.core.model import LLaDAConfig, LLaDAModel
from refinery.core.tokenizer import load_tokenizer
from refinery.cli import main as cli_main
from test_tokenizer import write_llada_like_tokenizer

VOCAB, MASK, EOS = 96, 95, 1


def reference(next_head: bool, n_kv_heads: int = 4, vocab: int = VOCAB, seed: int = 0, **ids) -> LLaDAModel:
    torch.manual_seed(seed)
    ids = dict(dict(mask_token_id=MASK, eos_token_id=EOS), **ids)
    cfg = LLaDAConfig(vocab_size=vocab, d_model=32, n_layers=2, n_heads=4, n_kv_heads=n_kv_heads, mlp_hidden_size=64,
                      rope_theta=500000.0, max_sequence_length=128, next_token_head=next_head, **ids)
    model = LLaDAModel(cfg).eval()
    with torch.no_grad():  # norms away from 1 so a swapped norm would show in the logits
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.uniform_(0.5, 1.5)
    return model


# Written by hand (not derived from core.convert's tables) so a wrong rule in the converter fails the tests.
def llada_names(model: LLaDAModel) -> dict[str, torch.Tensor]:
    out = {"model.transformer.wte.weight": model.embed_tokens.weight,
           "model.transformer.ln_f.weight": model.norm.weight, "model.transformer.ff_out.weight": model.lm_head.weight}
    for i, b in enumerate(model.layers):
        p = f"model.transformer.blocks.{i}."
        out.update({p + "attn_norm.weight": b.attn_norm.weight, p + "q_proj.weight": b.attn.q_proj.weight,
                    p + "k_proj.weight": b.attn.k_proj.weight, p + "v_proj.weight": b.attn.v_proj.weight,
                    p + "attn_out.weight": b.attn.o_proj.weight, p + "ff_norm.weight": b.mlp_norm.weight,
                    p + "ff_proj.weight": b.mlp.gate_proj.weight, p + "up_proj.weight": b.mlp.up_proj.weight,
                    p + "ff_out.weight": b.mlp.down_proj.weight})
    return {k: v.detach().clone() for k, v in out.items()}


def medlm_names(model: LLaDAModel, prefix: str = "model.") -> dict[str, torch.Tensor]:
    out = {prefix + "embed_tokens.weight": model.embed_tokens.weight, prefix + "norm.weight": model.norm.weight,
           "lm_head.weight": model.lm_head.weight}
    if model.next_token_head is not None:
        out["next_token_head.weight"] = model.next_token_head.weight
    for i, b in enumerate(model.layers):
        p = f"{prefix}layers.{i}."
        out.update({p + "input_layernorm.weight": b.attn_norm.weight,
                    p + "post_attention_layernorm.weight": b.mlp_norm.weight})
        out.update({p + f"self_attn.{n}.weight": getattr(b.attn, n).weight
                    for n in ("q_proj", "k_proj", "v_proj", "o_proj")})
        out.update({p + f"mlp.{n}.weight": getattr(b.mlp, n).weight for n in ("gate_proj", "up_proj", "down_proj")})
    return {k: v.detach().clone() for k, v in out.items()}


def llada_config_json(c: LLaDAConfig, **extra) -> dict:
    return dict(architectures=["LLaDAModelLM"], model_type="llada", d_model=c.d_model, n_heads=c.n_heads,
                n_kv_heads=c.n_kv_heads, n_layers=c.n_layers, mlp_hidden_size=c.mlp_hidden_size, mlp_ratio=4,
                vocab_size=c.vocab_size, embedding_size=c.vocab_size, rope_theta=c.rope_theta, rope=True,
                max_sequence_length=c.max_sequence_length, rms_norm_eps=c.rms_norm_eps, layer_norm_type="rms",
                activation_type="silu", block_type="llama", include_bias=False, include_qkv_bias=False,
                weight_tying=False, alibi=False, mask_token_id=c.mask_token_id, eos_token_id=c.eos_token_id,
                pad_token_id=c.eos_token_id) | extra


def medlm_config_json(c: LLaDAConfig, **extra) -> dict:
    return dict(architectures=["MEDLM"], hidden_size=c.d_model, num_hidden_layers=c.n_layers,
                num_attention_heads=c.n_heads, num_key_value_heads=c.n_kv_heads, intermediate_size=c.mlp_hidden_size,
                vocab_size=c.vocab_size, rope_theta=c.rope_theta, max_position_embeddings=c.max_sequence_length,
                rms_norm_eps=c.rms_norm_eps, hidden_act="silu", attention_bias=False, tie_word_embeddings=False,
                mask_token_id=c.mask_token_id, eos_token_id=[c.eos_token_id, 2]) | extra


def write_source(path: Path, tensors: dict, config: dict, shards: int = 1) -> Path:
    """Write ``tensors`` as one safetensors file, or ``shards`` files with a transformers-style index."""
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(json.dumps(config))
    keys = list(tensors)
    if shards == 1:
        save_file(tensors, str(path / "model.safetensors"))
        return path
    weight_map = {}
    for s in range(shards):
        name = f"model-{s + 1:05d}-of-{shards:05d}.safetensors"
        part = {k: tensors[k] for k in keys[s::shards]}
        save_file(part, str(path / name))
        weight_map.update(dict.fromkeys(part, name))
    (path / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return path


def load_converted(path: Path) -> LLaDAModel:
    """Build the model from the converted config.json and load every shard with strict key checking.

    Independent of from_pretrained on purpose: this checks the converter's files, not the loader.
    """
    model = LLaDAModel(LLaDAConfig.from_pretrained(str(path))).eval()
    state = {}
    for shard in sorted(path.glob("*.safetensors")):
        state.update(load_file(str(shard)))
    model.load_state_dict(state, strict=True)
    return model


def outputs(model, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, model.config.vocab_size, (2, 12), generator=g)
    attn = torch.ones_like(ids)
    attn[1, 9:] = 0
    with torch.no_grad():
        return model(ids, attention_mask=attn)


def assert_same_model(converted, ref) -> None:
    got, want = outputs(converted), outputs(ref)
    assert torch.equal(got.logits, want.logits)
    if ref.next_token_head is not None:
        assert torch.equal(got.next_logits, want.next_logits)


def test_llada_layout_single_file_round_trip(tmp_path):
    ref = reference(next_head=False)
    src = write_source(tmp_path / "src", llada_names(ref), llada_config_json(ref.config))
    report = convert_checkpoint(src, tmp_path / "dst", delete_token_id=7)
    assert report.layout == "llada" and report.next_token_head == "none" and report.shards == ["model.safetensors"]
    model = load_converted(tmp_path / "dst")
    assert not model.config.next_token_head and model.next_token_head is None
    assert (model.config.mask_token_id, model.config.eos_token_id, model.config.delete_token_id) == (MASK, EOS, 7)
    assert model.config.rope_theta == 500000.0
    assert_same_model(model, ref)


def test_medlm_layout_sharded_in_sharded_out(tmp_path):
    ref = reference(next_head=True, n_kv_heads=2)  # grouped-query attention, next-token head present
    src = write_source(tmp_path / "src", medlm_names(ref), medlm_config_json(ref.config), shards=3)
    report = convert_checkpoint(src, tmp_path / "dst", max_shard_size="10KB")
    assert report.layout == "medlm" and report.next_token_head == "source"
    assert len(report.shards) > 1
    index = json.loads((tmp_path / "dst" / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"]) == set(ref.state_dict())
    assert set(index["weight_map"].values()) == set(report.shards)
    for shard in report.shards:  # within the limit, unless one tensor alone is bigger (the 12 KB embedding)
        stored = load_file(str(tmp_path / "dst" / shard))
        assert len(stored) == 1 or sum(t.numel() * t.element_size() for t in stored.values()) <= 10_000
    model = load_converted(tmp_path / "dst")
    assert model.config.n_kv_heads == 2 and model.config.eos_token_id == EOS
    assert_same_model(model, ref)


def test_medlm_without_model_prefix_and_derived_buffers(tmp_path):
    ref = reference(next_head=True)
    tensors = medlm_names(ref, prefix="")
    tensors["layers.0.self_attn.rotary_emb.inv_freq"] = torch.ones(4)  # old exporters store it; it is derived
    src = write_source(tmp_path / "src", tensors, medlm_config_json(ref.config))
    report = convert_checkpoint(src, tmp_path / "dst", layout="medlm")
    assert report.ignored == ["layers.0.self_attn.rotary_emb.inv_freq"]
    assert_same_model(load_converted(tmp_path / "dst"), ref)


def test_add_next_token_head_copy_and_fresh(tmp_path):
    ref = reference(next_head=False)
    src = write_source(tmp_path / "src", llada_names(ref), llada_config_json(ref.config))
    convert_checkpoint(src, tmp_path / "copy", add_next_token_head="copy")
    copy = load_converted(tmp_path / "copy")
    out = outputs(copy)
    assert torch.equal(out.logits, outputs(ref).logits) and torch.equal(out.next_logits, out.logits)
    for name in ("fresh1", "fresh2"):
        convert_checkpoint(src, tmp_path / name, add_next_token_head="fresh", seed=3)
    a, b = (load_converted(tmp_path / n).next_token_head.weight for n in ("fresh1", "fresh2"))
    assert torch.equal(a, b) and not torch.equal(a, ref.lm_head.weight)  # seeded, not a copy
    assert abs(a.std().item() - ref.config.init_std) < 0.005
    with_head = reference(next_head=True)
    src = write_source(tmp_path / "medlm", medlm_names(with_head), medlm_config_json(with_head.config))
    with pytest.raises(ValueError, match="already has a next-token head"):
        convert_checkpoint(src, tmp_path / "x", add_next_token_head="copy")


def test_tied_llada_head_and_bf16(tmp_path):
    ref = reference(next_head=False)
    with torch.no_grad():
        ref.lm_head.weight.copy_(ref.embed_tokens.weight)
    tensors = llada_names(ref)
    del tensors["model.transformer.ff_out.weight"]
    src = write_source(tmp_path / "src", tensors, llada_config_json(ref.config, weight_tying=True))
    convert_checkpoint(src, tmp_path / "dst")
    assert_same_model(load_converted(tmp_path / "dst"), ref)
    convert_checkpoint(src, tmp_path / "bf16", dtype=torch.bfloat16)
    stored = load_file(str(tmp_path / "bf16" / "model.safetensors"))
    assert {t.dtype for t in stored.values()} == {torch.bfloat16}
    assert torch.equal(stored["lm_head.weight"], ref.embed_tokens.weight.to(torch.bfloat16))


def test_tokenizer_travels_with_delete_token(tmp_path):
    tok_ids = write_llada_like_tokenizer(tmp_path / "src")
    vocab = max(tok_ids.values()) + 1
    ref = reference(next_head=True, vocab=vocab, mask_token_id=tok_ids["<|mdm_mask|>"],
                    eos_token_id=tok_ids["<|endoftext|>"])
    write_source(tmp_path / "src", medlm_names(ref), medlm_config_json(ref.config))
    convert_checkpoint(tmp_path / "src", tmp_path / "dst")  # default delete token: <|reserved_token_0|>
    model, tok = load_converted(tmp_path / "dst"), load_tokenizer(tmp_path / "dst")  # renamed on disk already
    c = model.config
    assert c.delete_token_id == tok.convert_tokens_to_ids("<|del|>") == tok_ids["<|reserved_token_0|>"]
    assert (c.mask_token_id, c.eot_token_id, c.bos_token_id) == (
        tok_ids["<|mdm_mask|>"], tok_ids["<|eot_id|>"], tok_ids["<|startoftext|>"])
    assert_same_model(model, ref)
    # config.json and tokenizer disagreeing about [MASK] means they come from different checkpoints
    bad = medlm_config_json(ref.config)
    bad["mask_token_id"] = 3
    (tmp_path / "src" / "config.json").write_text(json.dumps(bad))
    with pytest.raises(ValueError, match="mask_token_id=3 but the tokenizer says"):
        convert_checkpoint(tmp_path / "src", tmp_path / "dst2")
    with pytest.raises(ValueError, match="reserved_token_7"):
        convert_checkpoint(tmp_path / "src", tmp_path / "dst3", delete_token="<|reserved_token_7|>")


@pytest.fixture
def good_llada(tmp_path):
    ref = reference(next_head=False)
    return ref, llada_names(ref), llada_config_json(ref.config)


def test_unknown_key_names_key_and_file(tmp_path, good_llada):
    _, tensors, cfg = good_llada
    tensors["model.transformer.blocks.0.attn_bias"] = torch.zeros(4)
    src = write_source(tmp_path / "src", tensors, cfg, shards=2)
    with pytest.raises(ValueError, match=r"model-0000\d-of-00002\.safetensors: unknown key "
                                         r"'model\.transformer\.blocks\.0\.attn_bias'"):
        convert_checkpoint(src, tmp_path / "dst")
    assert not (tmp_path / "dst").exists()  # validated before anything is written


def test_extra_layer_is_refused(tmp_path, good_llada):
    _, tensors, cfg = good_llada
    tensors["model.transformer.blocks.2.ff_norm.weight"] = torch.ones(32)
    with pytest.raises(ValueError, match=r"blocks\.2\.ff_norm\.weight.*n_layers"):
        convert_checkpoint(write_source(tmp_path / "src", tensors, cfg), tmp_path / "dst")


def test_missing_key_names_key_and_shape(tmp_path, good_llada):
    _, tensors, cfg = good_llada
    del tensors["model.transformer.blocks.1.up_proj.weight"]
    with pytest.raises(ValueError, match=r"missing key.*'layers\.1\.mlp\.up_proj\.weight' \[64, 32\]"):
        convert_checkpoint(write_source(tmp_path / "src", tensors, cfg), tmp_path / "dst")


def test_misshaped_key_names_key_file_and_shapes(tmp_path, good_llada):
    _, tensors, cfg = good_llada
    tensors["model.transformer.blocks.0.ff_out.weight"] = torch.zeros(64, 32)  # transposed down projection
    with pytest.raises(ValueError, match=r"model\.safetensors: key 'model\.transformer\.blocks\.0\.ff_out\.weight' "
                                         r"has shape \[64, 32\], expected \[32, 64\]"):
        convert_checkpoint(write_source(tmp_path / "src", tensors, cfg), tmp_path / "dst")


def test_unsupported_config_and_missing_config_key(tmp_path, good_llada):
    _, tensors, cfg = good_llada
    src = write_source(tmp_path / "src", tensors, dict(cfg, include_qkv_bias=True))
    with pytest.raises(ValueError, match="config.json: include_qkv_bias=True is not supported"):
        convert_checkpoint(src, tmp_path / "dst")
    src = write_source(tmp_path / "src", tensors, {k: v for k, v in cfg.items() if k != "n_layers"})
    with pytest.raises(ValueError, match="config.json: missing required key 'n_layers'"):
        convert_checkpoint(src, tmp_path / "dst")


def test_pickle_inputs_are_refused(tmp_path):
    d = tmp_path / "pickled"
    d.mkdir()
    (d / "config.json").write_text("{}")
    (d / "pytorch_model.bin").write_bytes(b"not loaded")
    with pytest.raises(ValueError, match=r"pytorch_model\.bin.*never loaded"):
        convert_checkpoint(d, tmp_path / "dst")
    with pytest.raises(ValueError, match=r"pytorch_model\.bin: pickle"):
        convert_checkpoint(d / "pytorch_model.bin", tmp_path / "dst")


def test_destination_not_overwritten_by_accident(tmp_path, good_llada):
    _, tensors, cfg = good_llada
    src = write_source(tmp_path / "src", tensors, cfg)
    convert_checkpoint(src, tmp_path / "dst", max_shard_size="10KB")
    with pytest.raises(ValueError, match="already holds a checkpoint"):
        convert_checkpoint(src, tmp_path / "dst")
    convert_checkpoint(src, tmp_path / "dst", overwrite=True)  # one shard now: the old shards and index must go
    assert sorted(p.name for p in (tmp_path / "dst").glob("model*")) == ["model.safetensors"]
    load_converted(tmp_path / "dst")


def test_layout_detection_and_key_map():
    assert detect_layout(["model.transformer.wte.weight"]) == "llada"
    assert detect_layout(["model.layers.0.mlp.gate_proj.weight", "lm_head.weight"]) == "medlm"
    with pytest.raises(ValueError, match="--layout"):
        detect_layout(["encoder.weight"])
    assert map_key("llada", "model.transformer.blocks.3.ff_proj.weight") == "layers.3.mlp.gate_proj.weight"
    assert map_key("llada", "model.transformer.ff_out.weight") == "lm_head.weight"
    assert map_key("medlm", "model.layers.0.self_attn.o_proj.weight") == "layers.0.attn.o_proj.weight"
    assert map_key("medlm", "model.transformer.wte.weight") is None


def test_parse_size():
    assert parse_size("16MB") == 16_000_000 and parse_size("2GiB") == 2 * 2**30 and parse_size(1234) == 1234
    for bad in ("lots", "0MB", "-3GB"):
        with pytest.raises(ValueError, match="max_shard_size"):
            parse_size(bad)


def test_cli(tmp_path, good_llada, capsys):
    ref, tensors, cfg = good_llada
    src = write_source(tmp_path / "src", tensors, cfg)
    rc = cli_main(["convert", str(src), str(tmp_path / "dst"), "--add-next-token-head", "copy",
                   "--delete-token-id", "5", "--no-progress"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "layout llada" in out and "next-token head: copy" in out and "delete 5" in out
    assert_same_model(load_converted(tmp_path / "dst"), ref)
    (src / "model.safetensors").rename(src / "model.pt")
    assert cli_main(["convert", str(src), str(tmp_path / "dst2")]) == 2
    assert "model.pt" in capsys.readouterr().err


def test_converted_checkpoint_through_from_pretrained(tmp_path):
    ref = reference(next_head=True)
    src = write_source(tmp_path / "src", medlm_names(ref), medlm_config_json(ref.config), shards=2)
    convert_checkpoint(src, tmp_path / "dst", max_shard_size="10KB")
    assert_same_model(load_model(tmp_path / "dst"), ref)


def test_mask_only_conversion_has_no_delete_token_unless_asked(tmp_path, capsys):
    """A LLaDA-8B-like mask-only source: by default no <|del|> (every id stays a real token); asked for, or
    when the result gets a next-token head, ME-DLM's reserved token plays it."""
    tok_ids = write_llada_like_tokenizer(tmp_path / "src")
    vocab = max(tok_ids.values()) + 1
    ref = reference(next_head=False, vocab=vocab, mask_token_id=tok_ids["<|mdm_mask|>"],
                    eos_token_id=tok_ids["<|endoftext|>"])
    write_source(tmp_path / "src", llada_names(ref), llada_config_json(ref.config))
    reserved = tok_ids["<|reserved_token_0|>"]
    assert cli_main(["convert", str(tmp_path / "src"), str(tmp_path / "plain"), "--no-progress"]) == 0
    assert "delete None" in capsys.readouterr().out
    plain = LLaDAConfig.from_pretrained(str(tmp_path / "plain"))
    vocab_after = load_tokenizer(tmp_path / "plain").get_vocab()
    assert plain.delete_token_id is None and "<|del|>" not in vocab_after
    assert vocab_after["<|reserved_token_0|>"] == reserved
    convert_checkpoint(tmp_path / "src", tmp_path / "asked", delete_token="<|reserved_token_0|>")
    assert LLaDAConfig.from_pretrained(str(tmp_path / "asked")).delete_token_id == reserved
    convert_checkpoint(tmp_path / "src", tmp_path / "edit", add_next_token_head="copy")
    assert LLaDAConfig.from_pretrained(str(tmp_path / "edit")).delete_token_id == reserved


def test_masked_decoding_without_a_delete_token_bans_no_real_token(scripted):
    """delete_token_id None: the masked strategy may write every vocabulary id but [MASK] (here id 62,
    which a model with a delete token would never be allowed to write)."""
    from refinery.core.decode import generate

    def fn(ids):
        logits = torch.zeros(ids.shape[0], ids.shape[1], 64)
        logits[..., 62] = 10.0  # the favourite is the id a delete token would have had
        return logits, None

    out = generate(scripted(fn, delete_token_id=None), [[5, 6]], 4, "masked", "1/1").tokens
    assert out.tolist() == [[62] * 4]
    banned = generate(scripted(fn), [[5, 6]], 4, "masked", "1/1").tokens  # delete_token_id 62 in the fixture
    assert 62 not in banned.tolist()[0]
