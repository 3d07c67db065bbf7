"""Hugging Face xLSTM folders in and out, against `transformers.xLSTMForCausalLM` itself: tiny random configs with
every weight drawn at random (the init's zero gate weights would hide differences), sequence lengths that are
not a multiple of the chunk, both weight modes, round trips bit for bit, and each bad input one message with
nothing written."""

import copy
import json
import logging

import pytest
import torch
import transformers
from safetensors.torch import load_file, save_file

from tests.evaluation.tiny_export import MODEL_VOCAB, TOKENIZER_VOCAB, corpus_texts
from xlstm_lm.data.config import TokenizerConfig
from xlstm_lm.data.tokenizer import train_tokenizer
from xlstm_lm.interop.huggingface import INDEX_FILE, export_folder, import_folder
from xlstm_lm.models import build_model
from xlstm_lm.models.io import load_pretrained, save_pretrained

log = logging.getLogger(__name__)
VOCAB, S = 97, 37  # S: two chunks of 16 and a partial third


def randomize_(model: torch.nn.Module) -> None:
    """Every weight drawn at random: matrices N(0, 0.3²), vectors (norm weights, gate biases) 1 + N(0, 0.3²)."""
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.copy_(torch.randn_like(parameter) * 0.3 + (1.0 if parameter.dim() == 1 else 0.0))


def hf_model(weight_mode="single", seed=0, **overrides):
    """A tiny transformers xLSTM with random weights everywhere (gate weights and biases included)."""
    torch.manual_seed(seed)
    config = transformers.xLSTMConfig(
        vocab_size=VOCAB, hidden_size=32, embedding_dim=32, num_hidden_layers=2, num_blocks=2, num_heads=2,
        chunk_size=16, weight_mode=weight_mode, **overrides)
    if weight_mode == "fused":  # transformers cannot initialize fused gates (a shape bug in _init_weights)
        config_single = transformers.xLSTMConfig(**{**config.to_dict(), "weight_mode": "single"})
        model = transformers.xLSTMForCausalLM(config_single)
    else:
        model = transformers.xLSTMForCausalLM(config)
    randomize_(model)
    return model.eval(), config


def hf_logits(model, ids):
    with torch.no_grad():  # transformers' cache is built with the wrong head dims when q, k are narrower than v
        return model(ids, use_cache=False).logits.float()


def save_hf(model, config, folder):
    """save_pretrained, or for fused weights the single-mode tensors concatenated as the fused layout stores
    them (transformers cannot build a fused model to save)."""
    model.save_pretrained(folder)
    if config.weight_mode == "fused":
        weights = load_file(str(folder / "model.safetensors"))
        for n in range(config.num_blocks):
            p = f"backbone.blocks.{n}."
            names = [f"{p}mlstm_layer.{x}.weight" for x in ("q", "k", "v", "ogate_preact")]
            weights[f"{p}mlstm_layer.qkv_opreact.weight"] = torch.cat([weights.pop(name) for name in names])
            for kind in ("weight", "bias"):
                weights[f"{p}mlstm_layer.ifgate_preact.{kind}"] = torch.cat(
                    [weights.pop(f"{p}mlstm_layer.{gate}gate_preact.{kind}") for gate in "if"])
            weights[f"{p}ffn.proj_up_gate_z.weight"] = torch.cat(
                [weights.pop(f"{p}ffn.proj_up_gate.weight"), weights.pop(f"{p}ffn.proj_up.weight")])
        save_file(weights, str(folder / "model.safetensors"), metadata={"format": "pt"})
        (folder / "config.json").write_text(json.dumps({**json.loads((folder / "config.json").read_text()),
                                                        "weight_mode": "fused"}))


def greedy(next_logits, prompt, steps=32):
    ids = prompt
    for _ in range(steps):
        ids = torch.cat([ids, next_logits(ids)[:, -1].argmax(-1, keepdim=True)], dim=1)
    return ids[:, prompt.shape[1]:]


def float64_logits(folder, ids):
    """transformers' logits in float64 with its float32 norm reductions off: the published math, rounded only at
    float64 precision."""
    hf64 = transformers.xLSTMForCausalLM.from_pretrained(folder, norm_reduction_force_float32=False).double()
    with torch.no_grad():
        return hf64.eval()(ids, use_cache=False).logits


def assert_computes_what_transformers_computes(ours, hf, hf_single_folder, ids):
    """In float64 the same math: only our float32 logits round (the cast and the soft cap computed on them), a few
    float32 ulps. In float32 the two implementations round differently and their gap depends on the draw and on
    the CPU's kernels; ours must be as accurate as transformers' own float32, within a factor of 2 for the order
    of roundings (over 8 draws the ratio was 0.77-1.24; a bf16-rounded gate makes it 780)."""
    truth = float64_logits(hf_single_folder, ids)
    with torch.no_grad():
        our_error = (ours(ids).double() - truth).abs().max().item()
        ours64 = copy.deepcopy(ours).double()  # Module.double() converts in place: leave `ours` in float32
        assert (ours64(ids).double() - truth).abs().max() <= 4 * truth.abs().max() * 2**-24
    their_error = (hf_logits(hf, ids).double() - truth).abs().max().item()
    log.info("max |error| against float64: ours %.2e, transformers %.2e", our_error, their_error)
    assert our_error <= 2 * their_error, (our_error, their_error)


@pytest.mark.parametrize("weight_mode", ["single", "fused"])
def test_an_imported_folder_computes_what_transformers_computes(tmp_path, weight_mode):
    model, config = hf_model(weight_mode)
    save_hf(model, config, tmp_path / "hf")
    model.save_pretrained(tmp_path / "hf_single")  # transformers cannot build a fused model
    ours = load_pretrained(import_folder(tmp_path / "hf", tmp_path / "ours")).eval()
    ids = torch.randint(0, VOCAB, (2, S), generator=torch.Generator().manual_seed(1))
    assert_computes_what_transformers_computes(ours, model, tmp_path / "hf_single", ids)
    prompt = ids[:1, :5]
    with torch.no_grad():
        assert torch.equal(greedy(ours, prompt), greedy(lambda x: hf_logits(model, x), prompt))


def test_our_export_loads_in_transformers_and_round_trips_bit_for_bit(tmp_path, tiny_large_export):
    hf_folder = export_folder(tiny_large_export, tmp_path / "hf")
    hf = transformers.xLSTMForCausalLM.from_pretrained(hf_folder).eval()
    ours = load_pretrained(tiny_large_export).eval()
    ids = torch.randint(0, MODEL_VOCAB, (2, S), generator=torch.Generator().manual_seed(2))
    assert_computes_what_transformers_computes(ours, hf, hf_folder, ids)
    tokenizer = transformers.AutoTokenizer.from_pretrained(hf_folder)
    assert tokenizer.decode(tokenizer("an xLSTM in transformers")["input_ids"]) == "an xLSTM in transformers"
    back = import_folder(hf_folder, tmp_path / "back")
    original, returned = load_file(str(tiny_large_export / "model.safetensors")), load_file(str(back / "model.safetensors"))
    assert original.keys() == returned.keys() and all(torch.equal(original[k], returned[k]) for k in original)
    for weight_mode in ("single", "fused"):  # theirs -> ours -> theirs
        again = export_folder(back, tmp_path / f"again_{weight_mode}", weight_mode=weight_mode)
        if weight_mode == "single":
            first, second = load_file(str(hf_folder / "model.safetensors")), load_file(str(again / "model.safetensors"))
            assert first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)
        again_ours = import_folder(again, tmp_path / f"again_ours_{weight_mode}")
        returned = load_file(str(again_ours / "model.safetensors"))
        assert all(torch.equal(original[k], returned[k]) for k in original)


@pytest.fixture
def tiny_large_export(tmp_path):
    """Our xlstm_large export with random non-zero weights and a trained tokenizer."""
    torch.manual_seed(0)
    model = build_model(dict(architecture="xlstm_large", vocab_size=MODEL_VOCAB, embedding_dim=32, num_blocks=2,
                             num_heads=2, chunk_size=16))
    randomize_(model)
    folder = save_pretrained(model, tmp_path / "export")
    train_tokenizer(corpus_texts(), TokenizerConfig(vocab_size=TOKENIZER_VOCAB)).save(str(folder / "tokenizer.json"))
    return folder


def edit_config(folder, **changes):
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, **changes}))


def edit_weights(folder, change):
    weights = load_file(str(folder / "model.safetensors"))
    change(weights)
    save_file(weights, str(folder / "model.safetensors"))


def shard(folder):
    """Split model.safetensors into two shards with their index, as large checkpoints are stored."""
    weights = load_file(str(folder / "model.safetensors"))
    names = sorted(weights)
    parts = {"model-00001-of-00002.safetensors": names[::2], "model-00002-of-00002.safetensors": names[1::2]}
    for file, part in parts.items():
        save_file({name: weights[name] for name in part}, str(folder / file))
    (folder / "model.safetensors").unlink()
    (folder / INDEX_FILE).write_text(json.dumps({"weight_map": {n: f for f, part in parts.items() for n in part}}))


def test_sharded_weights_import_like_one_file(tmp_path):
    model, config = hf_model()
    save_hf(model, config, tmp_path / "hf")
    whole = load_file(str(import_folder(tmp_path / "hf", tmp_path / "whole") / "model.safetensors"))
    shard(tmp_path / "hf")
    sharded = load_file(str(import_folder(tmp_path / "hf", tmp_path / "sharded") / "model.safetensors"))
    assert whole.keys() == sharded.keys() and all(torch.equal(whole[k], sharded[k]) for k in whole)


@pytest.mark.parametrize("break_it, message", [
    (lambda f: edit_config(f, model_type="llama"), "describes a 'llama' model"),
    (lambda f: edit_config(f, use_bias=True), r"use_bias=True \(we support False\)"),
    (lambda f: edit_config(f, v_dim_factor=2.0, add_out_norm=False), "v_dim_factor=2.0.*add_out_norm=False"),
    (lambda f: edit_config(f, hidden_size=64), "shape mismatch"),
    (lambda f: edit_weights(f, lambda w: w.pop("backbone.blocks.1.mlstm_layer.q.weight")), "missing.*blocks.1.q"),
    (lambda f: edit_weights(f, lambda w: w.update(extra=torch.zeros(1))), r"unexpected: \['extra'\]"),
    (lambda f: (shard(f), (f / "model-00002-of-00002.safetensors").unlink()), "shard.*missing.*00002"),
    (lambda f: (f / "model.safetensors").write_bytes(b"not safetensors"), "not a readable safetensors"),
])
def test_bad_folders_fail_with_one_message_and_write_nothing(tmp_path, break_it, message):
    model, config = hf_model()
    save_hf(model, config, tmp_path / "hf")
    break_it(tmp_path / "hf")
    with pytest.raises((ValueError, FileNotFoundError), match=message):
        import_folder(tmp_path / "hf", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_a_destination_that_holds_files_is_refused(tmp_path, tiny_large_export):
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="not an empty folder"):
        export_folder(tiny_large_export, tmp_path / "taken")
    assert [p.name for p in (tmp_path / "taken").iterdir()] == ["notes.txt"]
    paper = save_pretrained(build_model(dict(architecture="xlstm", vocab_size=64, embedding_dim=32, num_blocks=2,
                                             num_heads=2)), tmp_path / "paper")
    with pytest.raises(ValueError, match="'xlstm' model: only xlstm_large"):
        export_folder(paper, tmp_path / "hf")


def test_the_cli_converts_both_ways_and_reports_bad_input_in_one_line(tmp_path, tiny_large_export, capsys, caplog):
    from xlstm_lm.cli.convert import main

    main(["to-hf", str(tiny_large_export), str(tmp_path / "hf"), "--weight-mode", "fused"])
    main(["from-hf", str(tmp_path / "hf"), str(tmp_path / "ours")])
    assert capsys.readouterr().out.splitlines() == [f"wrote {tmp_path / 'hf'}", f"wrote {tmp_path / 'ours'}"]
    with pytest.raises(SystemExit) as exit_code:
        main(["from-hf", str(tmp_path / "nowhere"), str(tmp_path / "x")])
    assert exit_code.value.code == 1 and "nowhere/config.json not found" in caplog.text
