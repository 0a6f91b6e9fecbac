import pytest
import timm
import torch
from torch import nn

from pmsm_exp.snn.conversion import convert_to_snn
from pmsm_exp.models import create_model
from pmsm_exp.models import vit
from pmsm_exp.models.vit import PQAViT, calibrate_thresholds, initial_threshold, load_timm_weights
from pmsm_exp.snn.neurons import multistep_modules, spiking_neurons
from pmsm_exp.quant import PQA, make_activation, pqa_layers
from pmsm_exp.snn.simulation import simulate
from pmsm_exp.snn.spiking_vit import SpikingBiasOnce, SpikingMatMul, SpikingOnSum, SpikingTokens

TINY = dict(img_size=32, patch_size=8, embed_dim=64, depth=2, num_heads=4)
SPIKEZIP = (16, -0.5, 0.5 - 1 / 16)          # the paper's ViT setting (SpikeZIP-TF's signed quantizer)
SETTINGS = [SPIKEZIP, (8, -0.25, 1.0)]       # and PMSM's CNN default
N_QUANTIZERS = 2 + 2 * 10                    # patch, final norm; per block: 2 norms, q k v softmax attn·v proj, mlp hidden, fc2


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # tiny tensors: a second OpenMP thread gains little and, on a busy 2-core machine,
    # spin-waiting makes these tests several times slower
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def images(n=6, seed=1, dtype=torch.float32):
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def tiny_vit(levels=16, alpha=-0.5, beta=7 / 16, seed=0, **kwargs) -> PQAViT:
    torch.manual_seed(seed)
    return create_model("vit_tiny", 10, make_activation("pqa", levels, alpha, beta), **{**TINY, "calibrate": None, **kwargs})


@torch.no_grad()
def randomize(model: PQAViT, x, seed: int, lam_range) -> PQAViT:
    """O(1) random weights, then per layer λ = r · (the λ that clips nothing of its input on x),
    r ~ U(lam_range), set in forward order so every layer sees the final layers before it."""
    g = torch.Generator().manual_seed(seed)
    for name, p in model.named_parameters():
        if name.endswith("threshold"):
            continue
        if name.endswith("weight") and p.dim() >= 2:
            p.normal_(0, p[0].numel() ** -0.5, generator=g)
        elif name.endswith("weight"):  # LayerNorm gain
            p.uniform_(0.5, 1.5, generator=g)
        else:                          # biases, class token, position embedding
            p.normal_(0, 0.3, generator=g)
    lo, hi = lam_range

    def set_lambda(q, inputs):
        r = lo + (hi - lo) * torch.rand((), generator=g).item()
        q.threshold.copy_(initial_threshold(inputs[0], q, "max") * r)

    hooks = [q.register_forward_pre_hook(set_lambda) for q in pqa_layers(model).values()]
    model.eval()(x.to(next(model.parameters()).dtype))
    for h in hooks:
        h.remove()
    return model


@torch.no_grad()
def run_qann(model, x):
    """Logits, Σ|k| per quantizer (what its AIF layer must emit at t = 1), the raw levels
    floor(z/θ + 1/2) per quantizer, and how many of them the clamp changed."""
    sums, raw, clipped, hooks = {}, {}, {}, []

    def record(name):
        def hook(q, inputs, out):
            k = torch.floor(inputs[0] / q.step_size() + 0.5)
            raw[name] = k
            sums[name] = torch.clamp(k, q.min_level, q.max_level).abs().sum().item()
            # an unsigned neuron never fires below 0, so clipping there leaves nothing for later steps
            low = (k < q.min_level).sum().item() if q.min_level < 0 else 0
            clipped[name] = (k > q.max_level).sum().item() + low
        return hook

    for name, q in pqa_layers(model).items():
        hooks.append(q.register_forward_hook(record(name)))
    logits = model(x)
    for h in hooks:
        h.remove()
    return logits, sums, raw, clipped


# ---- 1. lossless at T = 1 ----------------------------------------------------------------------

@pytest.mark.parametrize("levels, alpha, beta", SETTINGS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_spiking_vit_first_step_equals_quantized_vit(levels, alpha, beta, dtype):
    x = images(dtype=dtype)
    qann = randomize(tiny_vit(levels, alpha, beta).to(dtype), x, seed=levels, lam_range=(0.3, 1.5))
    logits, level_sums, _, clipped = run_qann(qann, x)
    assert sum(clipped.values()) > 0  # some layers saturate: exactness must not depend on it

    result = simulate(convert_to_snn(qann), x, timesteps=1, encoding="first", readout="sum")
    first = result.outputs[0]
    assert (first - logits).abs().max() <= 1e-5 * logits.abs().max()
    assert torch.equal(first.argmax(1), logits.argmax(1))
    assert torch.equal(first, logits)  # in fact bit for bit: step 1 runs the QANN's float operations
    counts = {n: c[0].item() for n, c in result.spike_counts.items()}
    assert counts == level_sums and len(counts) == N_QUANTIZERS
    assert all(s > 0 for s in level_sums.values())  # every layer (softmax included) carries signal


def test_vit_s_sizes_first_step_exact():
    # ViT-S's 224 px, patch 16, width 384 and 6 heads (197 tokens); 2 of its 12 blocks to stay fast
    x = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    qann = create_model("vit_s", 10, make_activation("pqa", *SPIKEZIP), depth=2, calibrate=None)
    qann = randomize(qann, x, 0, (0.5, 1.5))
    logits, level_sums, _, _ = run_qann(qann, x)
    result = simulate(convert_to_snn(qann), x, timesteps=1, encoding="first", readout="sum")
    assert torch.equal(result.outputs[0], logits)
    assert {n: c[0].item() for n, c in result.spike_counts.items()} == level_sums


# ---- 2. more timesteps --------------------------------------------------------------------------
# With the image at step 1 and zeros afterwards, an AIF neuron whose level was not clamped
# keeps a residue in [0, 1) (units of θ) and never fires again; the bias-free layers pass
# zeros, LayerNorm/softmax see an unchanged sum (difference exactly 0) and the cross terms
# vanish. So if no quantizer clamps on the input, every later step adds exactly 0 and the
# summed output equals T = 1 for all T (checked bit for bit below).
# A clamped neuron keeps the excess charge and releases it later (soft reset, at most βL
# spikes a step): the SNN then moves from the clamped QANN towards the unclamped network,
# through softmax and LayerNorm, with no useful general bound. What can be proven is the
# first layer, whose input is exactly zero after step 1: after t steps its neuron has emitted
# clamp(floor(z/θ + 1/2), t·αL, t·βL) -- this checks that the patch conv adds no bias later.

@pytest.mark.parametrize("chunk", [None, 3])
def test_sum_stays_at_first_step_without_saturation(chunk):
    x = images()
    qann = randomize(tiny_vit(), x, seed=2, lam_range=(1.0, 2.0))
    logits, _, _, clipped = run_qann(qann, x)
    assert sum(clipped.values()) == 0  # the premise

    result = simulate(convert_to_snn(qann), x, timesteps=8, encoding="first", readout="sum", chunk=chunk)
    assert torch.equal(result.outputs[0], logits)
    for t in range(1, 8):
        assert torch.equal(result.outputs[t], result.outputs[0])
    assert all(c[1:].sum() == 0 for c in result.spike_counts.values())


def test_saturation_drains_later_and_first_step_stays_exact():
    x = images()
    qann = randomize(tiny_vit(), x, seed=3, lam_range=(0.3, 0.8))
    logits, _, raw, clipped = run_qann(qann, x)
    assert clipped["patch_quant"] > 0

    snn = convert_to_snn(qann)
    result = simulate(snn, x, timesteps=8, encoding="first", readout="sum")
    assert torch.equal(result.outputs[0], logits)
    assert sum(c[1:].sum() for c in result.spike_counts.values()) > 0  # the excess does come out later
    q = pqa_layers(qann)["patch_quant"]
    emitted = result.spike_counts["patch_quant"].cumsum(0)
    for t in range(1, 9):
        expected = raw["patch_quant"].clamp(t * q.min_level, t * q.max_level).abs().sum()
        assert emitted[t - 1] == expected

    # chunking only changes the batching of stateless layers: same answer up to float rounding
    one_by_one = simulate(snn, x, timesteps=8, encoding="first", readout="sum", chunk=1)
    assert torch.equal(one_by_one.outputs[0], logits)
    assert torch.allclose(one_by_one.outputs, result.outputs, atol=1e-4 * logits.abs().max())


def test_multistep_call_from_reset_adds_bias_and_tokens_once():
    x = images(4)
    qann = randomize(tiny_vit(), x, seed=4, lam_range=(1.0, 2.0))
    with torch.no_grad():
        logits = qann(x)
        snn = convert_to_snn(qann)
        for m in multistep_modules(snn).values():
            m.reset_state()
            m.steps = 3
        out = snn(torch.cat([x, torch.zeros_like(x), torch.zeros_like(x)])).reshape(3, 4, 10)
    assert torch.equal(out[0], logits)
    assert torch.equal(out[1:], torch.zeros_like(out[1:]))


def without_quantizers(model: nn.Module) -> nn.Module:
    for name, q in list(pqa_layers(model).items()):
        parent, _, attr = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, attr, nn.Identity())
    return model


@pytest.mark.parametrize("chunk", [1, 4])
def test_spiking_parts_compute_the_network_of_the_summed_input(chunk):
    # Without neurons (quantizers -> identity) the network is f = linear maps, LayerNorm,
    # softmax and products; the spiking versions must emit the change of f(Σ inputs so far)
    # at every step, for any input sequence: this checks the cross terms, the accumulated
    # LayerNorm/softmax and that biases/tokens enter once, independently of the neurons.
    x = images(dtype=torch.float64)
    f = without_quantizers(randomize(tiny_vit().double(), x, seed=8, lam_range=(1.0, 1.0)))
    inputs = [images(4, seed=s, dtype=torch.float64) for s in range(4)]
    snn = convert_to_snn(f)
    for m in multistep_modules(snn).values():
        m.reset_state()
    outputs = []
    with torch.no_grad():
        for start in range(0, 4, chunk):
            for m in multistep_modules(snn).values():
                m.steps = chunk
            outputs += snn(torch.cat(inputs[start:start + chunk])).split(4)
        for t in range(1, 5):
            expected = f(sum(inputs[:t]))
            assert torch.allclose(sum(outputs[:t]), expected, rtol=0, atol=1e-9 * expected.abs().max())


def test_conversion_replaces_every_stateful_part():
    snn = convert_to_snn(tiny_vit())
    kinds = {}
    for m in multistep_modules(snn).values():
        kinds[type(m)] = kinds.get(type(m), 0) + 1
    blocks = TINY["depth"]
    assert kinds[SpikingBiasOnce] == 1 + 4 * blocks + 1        # patch conv, qkv proj fc1 fc2, head
    assert kinds[SpikingOnSum] == 3 * blocks + 1               # 2 norms + softmax per block, final norm
    assert kinds[SpikingMatMul] == 2 * blocks
    assert kinds[SpikingTokens] == 1
    assert pqa_layers(snn) == {} and len(spiking_neurons(snn)) == N_QUANTIZERS
    softmax_neuron = spiking_neurons(snn)["blocks.0.attn.attn_quant"]
    assert (softmax_neuron.max_pos, softmax_neuron.max_neg) == (16, 0)
    hidden_neuron = spiking_neurons(snn)["blocks.0.mlp.act"]
    assert (hidden_neuron.max_pos, hidden_neuron.max_neg) == (16, 0)
    q_neuron = spiking_neurons(snn)["blocks.0.attn.q_quant"]
    assert (q_neuron.max_pos, q_neuron.max_neg) == (7, 8)


# ---- 3. timm weights ----------------------------------------------------------------------------

def timm_tiny(**kwargs):
    torch.manual_seed(5)
    return timm.create_model("vit_small_patch16_224", pretrained=False, num_classes=10, **TINY, **kwargs)


def test_loads_timm_state_dict_and_reproduces_timm_in_full_precision():
    net = timm_tiny(act_layer=nn.ReLU).eval()
    model = tiny_vit()
    absent = load_timm_weights(model, net.state_dict())
    assert absent == sorted(f"{n}.threshold" for n in pqa_layers(model))
    own = model.state_dict()
    for key, value in net.state_dict().items():
        assert torch.equal(own[key], value), key
    assert set(own) - set(net.state_dict()) == set(absent) | {"calibrated"}
    # same architecture: without quantizers (ReLU factory) it computes timm's ViT-ReLU
    full = create_model("vit_tiny", 10, nn.ReLU, **TINY).eval()
    load_timm_weights(full, net.state_dict())
    x = images(2)
    with torch.no_grad():
        assert torch.allclose(full(x), net(x), atol=1e-5)


def test_vit_s_keys_match_timm_vit_small():
    model = create_model("vit_s", 1000, make_activation("pqa", *SPIKEZIP))
    state = timm.create_model("vit_small_patch16_224", pretrained=False).state_dict()
    assert sum(p.numel() for p in state.values()) == pytest.approx(22.05e6, rel=0.01)
    assert len(load_timm_weights(model, state)) == 2 + 12 * 10


def test_load_from_file_and_wrapped_checkpoint(tmp_path):
    state = timm_tiny().state_dict()
    torch.save(state, tmp_path / "vit.pth")
    model = create_model("vit_tiny", 10, make_activation("pqa", *SPIKEZIP), checkpoint=tmp_path / "vit.pth", **TINY)
    assert torch.equal(model.blocks[1].mlp.fc2.weight, state["blocks.1.mlp.fc2.weight"])
    assert not model.calibrated  # thresholds not in a timm file: first training batch calibrates them
    wrapped = {"state_dict": {f"model.{k}": v for k, v in model.state_dict().items()}}
    again = tiny_vit()
    assert load_timm_weights(again, wrapped) == [] and again.calibrated  # our own checkpoint: λ included


def test_load_errors_name_the_keys():
    state = timm_tiny().state_dict()
    renamed = dict(state)
    renamed["blocks.0.attn.qkv.w"] = renamed.pop("blocks.0.attn.qkv.weight")
    with pytest.raises(ValueError, match=r"missing keys: blocks\.0\.attn\.qkv\.weight; unexpected keys: blocks\.0\.attn\.qkv\.w"):
        load_timm_weights(tiny_vit(), renamed)
    missing = {k: v for k, v in state.items() if k != "norm.bias"}
    with pytest.raises(ValueError, match=r"missing keys: norm\.bias$"):
        load_timm_weights(tiny_vit(), missing)
    wrong_head = timm.create_model("vit_small_patch16_224", pretrained=False, num_classes=1000, **TINY).state_dict()
    with pytest.raises(ValueError, match=r"shape mismatch: head\.weight \(checkpoint \(1000, 64\), model \(10, 64\)\), head\.bias"):
        load_timm_weights(tiny_vit(), wrong_head)
    with pytest.raises(FileNotFoundError, match="nowhere.pth"):
        load_timm_weights(tiny_vit(), "nowhere.pth")


def test_pretrained_offline_gives_clear_error(monkeypatch):
    def offline(*args, **kwargs):
        raise OSError("Name or service not known")

    monkeypatch.setattr(vit.timm, "create_model", offline)
    with pytest.raises(RuntimeError, match=r"vit_small_patch16_224.*checkpoint=<that file>"):
        create_model("vit_s", 10, make_activation("pqa", *SPIKEZIP), pretrained=True)
    with pytest.raises(ValueError, match="no pretrained weights"):
        create_model("vit_tiny", 10, make_activation("pqa", *SPIKEZIP), pretrained=True)


# ---- 4. refusals and λ initialisation -----------------------------------------------------------

def test_conversion_refuses_gelu_naming_path():
    model = tiny_vit()
    model.blocks[1].mlp.act = nn.GELU()
    with pytest.raises(ValueError, match=r"'blocks\.1\.mlp\.act' \(GELU\)"):
        convert_to_snn(model)
    with pytest.raises(ValueError, match=r"'blocks\.0\.mlp\.act' \(GELU\)"):
        convert_to_snn(timm_tiny())
    with pytest.raises(ValueError, match=r"'blocks\.0\.mlp\.act' \(ReLU\)"):
        convert_to_snn(create_model("vit_tiny", 10, nn.ReLU, **TINY))


def test_builder_validates_factory():
    with pytest.raises(ValueError, match="alpha < 0.*alpha=0.0"):
        create_model("vit_tiny", 10, make_activation("pqa", 16, 0.0, 1.0))
    with pytest.raises(ValueError, match="unknown calibrate='mean'"):
        create_model("vit_tiny", 10, make_activation("pqa", *SPIKEZIP), calibrate="mean")
    model = create_model("vit_tiny", 100, make_activation("pqa", *SPIKEZIP, threshold=3.0))
    q = pqa_layers(model)
    assert q["blocks.0.attn.attn_quant"].threshold.item() == 1.0 and q["blocks.0.attn.attn_quant"].alpha == 0
    assert q["blocks.0.mlp.act"].threshold.item() == 3.0 and q["blocks.0.mlp.act"].alpha == 0
    assert q["blocks.0.attn.q_quant"].alpha == -0.5 and q["blocks.0.attn.q_quant"].levels == 16
    assert q["blocks.0.attn.q_quant"].threshold.item() == 3.0
    assert model.eval()(torch.zeros(2, 3, 32, 32)).shape == (2, 100)


def test_max_calibration_clips_nothing_and_lsq_follows_its_rule():
    x = images()
    model = randomize(tiny_vit(), x, seed=6, lam_range=(0.2, 0.3))
    assert sum(run_qann(model, x)[3].values()) > 0
    calibrate_thresholds(model, x, "max")
    assert sum(run_qann(model, x)[3].values()) == 0
    calibrate_thresholds(model, x, "lsq")
    with torch.no_grad():
        z = model.patch_embed(x)
    assert model.patch_quant.threshold.item() == pytest.approx(16 * 2 * z.abs().mean().item() / 8 ** 0.5, rel=1e-5)


def test_first_training_batch_calibrates_once():
    model = tiny_vit(calibrate="lsq").train()
    before = torch.stack([q.threshold.detach().clone() for q in pqa_layers(model).values()])
    model(images())
    after = torch.stack([q.threshold.detach().clone() for q in pqa_layers(model).values()])
    assert model.calibrated and not torch.equal(before, after) and (after > 0).all()
    model(images(seed=7) * 3)
    assert torch.equal(after, torch.stack([q.threshold.detach() for q in pqa_layers(model).values()]))
    fresh = tiny_vit(calibrate="lsq")
    fresh.load_state_dict(model.state_dict())
    assert fresh.calibrated and isinstance(fresh.patch_quant, PQA)


def test_stbif_baseline_converges_where_aif_is_exact_at_once():
    """SpikeZIP-TF's ST-BIF+ (one spike per step) needs many steps; PMSM's AIF needs one."""
    from pmsm_exp.models.vit import calibrate_thresholds
    torch.manual_seed(0)
    qvit = create_model("vit_tiny", 10, make_activation("pqa", 16, -0.5, 0.4375), depth=2, embed_dim=64)
    x = torch.randn(8, 3, 32, 32)
    calibrate_thresholds(qvit, x)
    qvit.eval()
    with torch.no_grad():
        logits = qvit(x)
    stbif = simulate(convert_to_snn(qvit, "stbif"), x, 32, encoding="first", readout="sum").outputs
    assert (stbif[0] - logits).abs().max() > 1e-2
    assert torch.allclose(stbif[-1], logits, atol=1e-4)
    assert torch.equal(simulate(convert_to_snn(qvit, "aif"), x, 1, encoding="first", readout="sum").outputs[0], logits)


def test_bounded_aif_keeps_a_clipping_vit_at_its_qann_where_aif_drifts():
    """Input clipped at step 1 stays in an AIF membrane and fires later; bounding the total stops it."""
    x = images()
    qvit = randomize(tiny_vit(), x, seed=6, lam_range=(0.2, 0.3)).eval()
    logits, _, _, clipped = run_qann(qvit, x)
    assert sum(clipped.values()) > 0
    aif = simulate(convert_to_snn(qvit, "aif"), x, 8, encoding="first", readout="sum").outputs
    bounded = simulate(convert_to_snn(qvit, "aif_bounded"), x, 8, encoding="first", readout="sum").outputs
    assert torch.equal(bounded[0], logits) and torch.equal(aif[0], logits)
    assert (aif[-1] - logits).abs().max() > 1e-2
    for t in range(8):
        assert torch.allclose(bounded[t], logits, atol=1e-5), t
