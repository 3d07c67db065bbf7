"""The official xlstm package's paper model imported, against `xlstm.xLSTMLMModel` itself (the peers extra): tiny
xlstm_1_1 and xlstm_7_1 layouts with every weight drawn at random (the init's zero recurrent kernels, gate
weights and norm offsets would hide mapping mistakes), sequence lengths that are not a multiple of a chunk, both
stored sLSTM layouts, and each bad input one message with nothing written."""

import dataclasses
import json
import logging

import pytest
import torch
import yaml
from safetensors.torch import save_file

xlstm = pytest.importorskip("xlstm")
from xlstm.blocks.slstm.cell import sLSTMCell_cuda  # noqa: E402

from xlstm_lm.interop.official import config_from_official, import_official, weights_from_official  # noqa: E402
from xlstm_lm.models import build_model  # noqa: E402
from xlstm_lm.models.io import load_pretrained  # noqa: E402

log = logging.getLogger(__name__)
VOCAB = 97
LAYOUTS = {  # xlstm_1_1 and xlstm_7_1 at a tiny size; the second has widths that round up (1.3 * 48 -> 64)
    "xlstm_1_1": dict(embedding_dim=32, num_blocks=2, slstm_at=[1]),
    "xlstm_7_1": dict(embedding_dim=48, num_blocks=8, slstm_at=[4]),
}


def official_config(layout="xlstm_1_1", slstm=None, feedforward=None, mlstm=None, **stack):
    """xLSTMLMModelConfig fields as the official repository's YAML configs write them (vanilla sLSTM: the CPU
    backend)."""
    return {"vocab_size": VOCAB, "context_length": 128, **LAYOUTS[layout], **stack,
            "mlstm_block": {"mlstm": {"num_heads": 4, **(mlstm or {})}},
            "slstm_block": {"slstm": {"backend": "vanilla", "num_heads": 4, **(slstm or {})},
                            "feedforward": {"proj_factor": 1.3, "act_fn": "gelu", **(feedforward or {})}}}


def official_model(fields: dict, seed=0, dtype=torch.float32):
    """The package's xLSTMLMModel for these fields, every parameter drawn from N(0, 0.2²) (norm weights are offsets
    from one there)."""
    mlstm, slstm = fields["mlstm_block"]["mlstm"], fields["slstm_block"]
    config = xlstm.xLSTMLMModelConfig(**{
        **fields, "mlstm_block": xlstm.mLSTMBlockConfig(mlstm=xlstm.mLSTMLayerConfig(**mlstm)),
        "slstm_block": xlstm.sLSTMBlockConfig(slstm=xlstm.sLSTMLayerConfig(**slstm["slstm"]),
                                              feedforward=xlstm.FeedForwardConfig(**slstm["feedforward"]))})
    torch.manual_seed(seed)
    model = xlstm.xLSTMLMModel(config).eval().to(dtype)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.copy_(torch.randn_like(parameter) * 0.2)
    return model


def write_official(folder, fields, model, yaml_config=True, safetensors=False):
    """The config (YAML under model:, as the official experiment configs, or top-level JSON) and the state dict."""
    folder.mkdir(exist_ok=True)
    if yaml_config:
        config = folder / "config.yaml"
        config.write_text(yaml.safe_dump({"model": fields, "training": {"lr": 1e-3}}))
    else:
        config = folder / "config.json"
        config.write_text(json.dumps(fields))
    weights = folder / ("model.safetensors" if safetensors else "model.pt")
    state = {name: tensor.contiguous() for name, tensor in model.state_dict().items()}
    if safetensors:
        save_file({name: t for name, t in state.items() if name != "lm_head.weight" or not fields.get("tie_weights")},
                  str(weights))
    else:
        torch.save(state, weights)
    return config, weights


@pytest.mark.parametrize("layout, tie, safetensors", [  # as close to the float64 model as the official one is
    ("xlstm_1_1", False, False), ("xlstm_7_1", False, True), ("xlstm_1_1", True, True),
    ("xlstm_1_1", True, False)])  # tied: safetensors stores the shared matrix once, torch.save under both names
def test_an_imported_model_computes_what_the_official_model_computes(tmp_path, layout, tie, safetensors):
    fields = official_config(layout, tie_weights=tie)
    model = official_model(fields)
    config, weights = write_official(tmp_path / "official", fields, model, yaml_config=not tie, safetensors=safetensors)
    ours = load_pretrained(import_official(config, weights, tmp_path / "ours")).eval()
    assert ours.config.slstm_positions == fields["slstm_at"] and ours.config.tie_embeddings == tie
    assert ours.num_parameters() == sum(p.numel() for p in model.parameters())
    ids = torch.randint(0, VOCAB, (2, 100), generator=torch.Generator().manual_seed(1))  # one chunk of 64 and a part
    with torch.no_grad():
        logits, theirs = ours(ids), model(ids)
        exact = model.double()(ids)  # the same weights in float64: float32 rounding grows through random blocks
    ours_error, their_error = ((x.double() - exact).abs().max().item() for x in (logits, theirs))
    log.info("%s: max |logit error| in float32, ours %.1e, official %.1e (logits up to %.1f)", layout, ours_error,
             their_error, exact.abs().max())
    assert ours_error <= 2 * their_error, (ours_error, their_error)


def features(model, ids):
    """Our final-norm output (the logits are float32 whatever the model's dtype)."""
    seen = []
    hook = model.final_norm.register_forward_hook(lambda module, inputs, output: seen.append(output))
    model(ids)
    hook.remove()
    return seen[0]


@pytest.mark.parametrize("layout", LAYOUTS)
def test_in_float64_ours_is_the_official_recurrent_form_to_rounding(layout):
    """The official forward runs the mLSTM in its parallel form, whose stabilizer differs from that of its step
    form (and ours, m starting at 0) where the eps of the normalizer enters, so the two forms of the package
    differ by about eps; its step form and ours agree to float64 rounding, with chunks of 16 inside."""
    fields = official_config(layout)
    model = official_model(fields, dtype=torch.float64)
    config, backend = config_from_official(fields)
    ours = build_model(dataclasses.replace(config, chunk_size=16)).double().eval()
    ours.load_state_dict(weights_from_official(model.state_dict(), ours, backend, "the official model"))
    ids = torch.randint(0, VOCAB, (2, 37), generator=torch.Generator().manual_seed(2))  # two chunks of 16 and a part
    with torch.no_grad():
        state, steps = None, []
        for t in range(ids.shape[1]):
            x, state = model.xlstm_block_stack.step(model.token_embedding(ids[:, t:t + 1]), state)
            steps.append(x)
        expected = torch.cat(steps, dim=1)
        difference = (features(ours, ids) - expected).abs().max().item()
        parallel = (model.xlstm_block_stack(model.token_embedding(ids)) - expected).abs().max().item()
    log.info("%s: ours vs official step form %.1e, official parallel vs step form %.1e", layout, difference, parallel)
    assert difference <= 1e-10, difference


def to_cuda_layout(model):
    """The state dict the official cuda sLSTM backend stores for this (vanilla) model, through the package's own
    layout conversions."""
    state = dict(model.state_dict())
    for n, block in enumerate(model.xlstm_block_stack.blocks):
        if hasattr(block.xlstm, "slstm_cell"):
            vanilla = block.xlstm.slstm_cell
            cuda = sLSTMCell_cuda(dataclasses.replace(vanilla.config, backend="cuda"), skip_backend_init=True)
            prefix = f"xlstm_block_stack.blocks.{n}.xlstm.slstm_cell."
            state[prefix + "_recurrent_kernel_"] = cuda._recurrent_kernel_ext2int(
                vanilla._recurrent_kernel_int2ext(vanilla._recurrent_kernel_)).contiguous()
            state[prefix + "_bias_"] = cuda._bias_ext2int(vanilla._bias_int2ext(vanilla._bias_)).contiguous()
            assert not torch.equal(state[prefix + "_bias_"], vanilla._bias_)  # the layouts do differ
    return state


def test_weights_saved_by_the_cuda_slstm_backend_import_alike(tmp_path):
    fields = official_config("xlstm_1_1")
    model = official_model(fields)
    vanilla = import_official(*write_official(tmp_path / "vanilla", fields, model), tmp_path / "ours_vanilla")
    cuda_fields = official_config("xlstm_1_1", slstm={"backend": "cuda"})
    config, weights = write_official(tmp_path / "cuda", cuda_fields, model)
    torch.save(to_cuda_layout(model), weights)
    cuda = import_official(config, weights, tmp_path / "ours_cuda")
    first, second = load_pretrained(vanilla).state_dict(), load_pretrained(cuda).state_dict()
    assert first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)


def test_widths_rounded_down_import_when_ours_can_hold_them(tmp_path):
    fields = official_config("xlstm_7_1", mlstm={"round_proj_up_dim_up": False})  # 2 * 48 -> 64, not 128
    model = official_model(fields)
    ours = load_pretrained(import_official(*write_official(tmp_path, fields, model), tmp_path / "ours")).eval()
    assert ours.config.inner_dim == 64
    ids = torch.randint(0, VOCAB, (1, 70), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():  # judged as above: two float32 forms differ by their rounding (and it depends on threads)
        logits, theirs = ours(ids), model(ids)
        exact = model.double()(ids)
    ours_error, their_error = ((x.double() - exact).abs().max().item() for x in (logits, theirs))
    assert ours_error <= 2 * their_error, (ours_error, their_error)


def drop(name):
    return lambda weights: weights.pop(name)


@pytest.mark.parametrize("config_change, weights_change, message", [
    ({}, drop("xlstm_block_stack.blocks.1.xlstm.slstm_cell._bias_"), r"missing: \[.*blocks.1.xlstm.slstm_cell._bias_"),
    ({}, lambda w: w.update(extra=torch.zeros(1)), r"unexpected: \['extra'\]"),
    ({}, lambda w: w.update({"lm_head.weight": torch.zeros(VOCAB, 16)}), r"lm_head.weight: file \(97, 16\) vs config"),
    ({"embedding_dim": 64}, None, "shape mismatch"),
    ({"slstm": {"function": "lstm"}}, None, r"slstm.function='lstm' \(we support 'slstm'\)"),
    ({"feedforward": {"act_fn": "relu"}}, None, r"feedforward.act_fn='relu' \(we support 'gelu'\)"),
    ({"bias": True}, None, r"model.bias=True \(we support False\)"),
    ({"add_post_blocks_norm": False}, None, "model.add_post_blocks_norm=False"),
    ({"slstm": {"group_norm_weight": False}}, None, "slstm.group_norm_weight=False"),
    ({"slstm": {"num_heads": 2}}, None, "mlstm.num_heads=4 and slstm.num_heads=2"),
    ({"mlstm": {"conv1d_kernel_size": 0}, "slstm": {"conv1d_kernel_size": 0}}, None, "conv1d_kernel_size=0"),
    ({"feedforward": {"proj_factor": 2.5, "round_proj_up_to_multiple_of": 32}}, None, "feedforward width 96 .*of 64"),
    ({"mlstm": {"round_proj_up_to_multiple_of": 48}}, None, "mlstm width 96 .*multiples of 64"),
    ({"slstm": {"backend": "triton"}}, None, "slstm.backend='triton'"),
    ({"slstm": {"num_head": 4}}, None, r"unknown xLSTMLMModelConfig field\(s\) slstm.num_head"),
    ({"vocab_size": -1}, None, "lacks vocab_size"),
])
def test_bad_inputs_fail_with_one_message_and_write_nothing(tmp_path, config_change, weights_change, message):
    model, config_change = official_model(official_config()), dict(config_change)
    sections = {key: config_change.pop(key) for key in ("mlstm", "slstm", "feedforward") if key in config_change}
    config, weights = write_official(tmp_path, official_config(**sections, **config_change), model)
    if weights_change:
        state = torch.load(weights, weights_only=True)
        weights_change(state)
        torch.save(state, weights)
    with pytest.raises(ValueError, match=message):
        import_official(config, weights, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_unreadable_files_and_a_taken_destination_are_refused(tmp_path):
    model = official_model(official_config())
    config, weights = write_official(tmp_path, official_config(), model)
    (tmp_path / "broken.pt").write_bytes(b"not a torch file")
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "notes.txt").write_text("mine")
    out = tmp_path / "out"
    for arguments, error, message in [((config, tmp_path / "broken.pt", out), ValueError, "not a readable"),
                                      ((config, tmp_path / "none.pt", out), FileNotFoundError, "none.pt"),
                                      ((tmp_path / "none.yaml", weights, out), FileNotFoundError, "none.yaml"),
                                      ((config, weights, tmp_path / "taken"), ValueError, "not an empty folder")]:
        with pytest.raises(error, match=message):
            import_official(*arguments)
    assert not out.exists() and [p.name for p in (tmp_path / "taken").iterdir()] == ["notes.txt"]


def test_the_cli_imports_and_reports_bad_input_in_one_line(tmp_path, capsys, caplog):
    from xlstm_lm.cli.convert import main

    fields = official_config()
    config, weights = write_official(tmp_path / "official", fields, official_model(fields))
    main(["from-official", str(config), str(weights), str(tmp_path / "ours")])
    assert capsys.readouterr().out.splitlines() == [f"wrote {tmp_path / 'ours'}"]
    assert load_pretrained(tmp_path / "ours").config.slstm_positions == [1]
    with pytest.raises(SystemExit) as exit_code:
        main(["from-official", str(config), str(tmp_path / "nowhere.pt"), str(tmp_path / "x")])
    assert exit_code.value.code == 1 and "nowhere.pt not found" in caplog.text
