"""The sparse training step against the dense one: the same loss and the same gradient for
every parameter, in float64, for every architecture and option (the dense path is itself
checked against hand-written references in test_saes.py); the awkward cases; and whole runs
on either path, or chosen automatically, ending in the same SAE."""

import json

import pytest
import torch

from gated_sae import create_sae
from gated_sae.data.synthetic import SyntheticFeatures
from gated_sae.saes import sparse
from gated_sae.train import slot as slot_module
from gated_sae.train.slot import TrainingSlot
from gated_sae.train.trainer import SAEConfig, TrainConfig, Trainer

pytestmark = pytest.mark.usefixtures("single_thread")
D_IN, D_SAE, N = 8, 24, 29  # 29 tokens in blocks of 4 rows: the last block has one row
f64 = torch.float64
CONFIGS = [
    ("relu", {}),
    ("relu", {"decoder_norm_l1": True}),
    ("gated", {}),
    ("gated", {"b_mag": False}),
    ("gated", {"r_mag": False}),
    ("gated", {"tied": False}),
    ("gated", {"tied": False, "b_mag": False}),
    ("gated", {"ri_l1": True}),
    ("gated", {"ri_l1": True, "tied": False}),
    ("topk", {"k": 3, "k_aux": 5, "aux_coef": 0.25}),
    ("batchtopk", {"k": 3, "k_aux": 5, "aux_coef": 0.25}),
    ("jumprelu", {"bandwidth": 0.3, "threshold_init": 0.05}),
]
IDS = [a + "".join(f"-{k}={v}" for k, v in o.items()) for a, o in CONFIGS]
BIASES = ("b_enc", "b_gate", "b_mag")


@pytest.fixture(autouse=True)
def small_blocks(monkeypatch):
    monkeypatch.setattr(sparse, "BLOCK_ELEMENTS", {"cpu": 4 * D_SAE, "cuda": 4 * D_SAE})


def make(arch, options, seed=0):
    torch.manual_seed(seed)
    sae = create_sae(arch, d_in=D_IN, d_sae=D_SAE, **options).to(f64)
    with torch.no_grad():
        for name, p in sae.named_parameters():
            if name == "threshold":
                p.copy_(torch.rand(D_SAE) * 0.8 + 0.1)
            elif name != "W_dec":
                p.add_(torch.randn_like(p) * 0.3)
    return sae


def inputs(seed=1, n=N):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, D_IN, generator=g, dtype=f64) * 1.5 + 0.5


def both_paths(sae, x, coef=0.4, dead=None):
    """(dense output, dense grads, sparse output, sparse grads) on copies of `sae`."""
    grads = []
    outs = []
    for path in ("dense", "sparse"):
        for p in sae.parameters():
            p.grad = None
        if path == "dense":
            out = sae.training_loss(x, coef, dead)
            out.loss.backward()
        else:
            out = sae.sparse_gradients(x, coef, dead)
        outs.append(out)
        grads.append({n: p.grad.clone() for n, p in sae.named_parameters()})
    return outs[0], grads[0], outs[1], grads[1]


def assert_same(sae, x, coef=0.4, dead=None):
    dense, dense_grads, sparse_out, sparse_grads = both_paths(sae, x, coef, dead)
    torch.testing.assert_close(sparse_out.loss, dense.loss.detach(), rtol=1e-12, atol=1e-12)
    sparse_terms = sparse_out.terms.present()
    assert list(sparse_terms) == list(dense.terms.present())
    for name, value in dense.terms.present().items():
        torch.testing.assert_close(sparse_terms[name], value, rtol=1e-12, atol=1e-12)
    assert torch.equal(sparse_out.fired, dense.fired)
    assert float(sparse_out.l0) == pytest.approx(float(dense.l0), abs=1e-6)
    assert sparse_out.active_pairs == dense.active_pairs
    for name, grad in dense_grads.items():
        # θ's gradient passes through the float32 copy both paths make of θ
        tol = 1e-6 if name == "threshold" else 1e-11
        torch.testing.assert_close(sparse_grads[name], grad, rtol=tol, atol=tol, msg=name)
    return dense, sparse_out, sparse_grads


@pytest.mark.parametrize(("arch", "options"), CONFIGS, ids=IDS)
def test_sparse_gradients_equal_dense(arch, options):
    sae = make(arch, options)
    dead = torch.arange(D_SAE) % 3 == 0 if "k_aux" in options else None
    _, out, _ = assert_same(sae, inputs(), dead=dead)
    assert 0 < out.active_pairs < N * D_SAE  # a real mix of active and inactive pairs
    if dead is not None:
        assert out.terms.aux > 0


@pytest.mark.parametrize(("arch", "options"), CONFIGS, ids=IDS)
def test_token_with_no_active_latent_and_latent_active_everywhere(arch, options):
    sae = make(arch, options)
    x = inputs()
    with torch.no_grad():
        x[3] = sae.b_dec  # centred input 0: only biases decide
        for name in BIASES:
            if name in dict(sae.named_parameters()):
                getattr(sae, name).fill_(-1.0)
                getattr(sae, name)[5] = 50.0  # latent 5 fires on every token
        if arch == "jumprelu":
            sae.threshold.fill_(2.0)
            sae.threshold[5] = 0.01
        if arch in ("topk", "batchtopk"):
            sae.W_enc[:, 5] = 0.0  # a positive pre-activation of 50 wherever the rest are
    dense, out, _ = assert_same(sae, x)
    assert bool(out.fired[5])
    if arch not in ("topk", "batchtopk"):  # those always keep k latents, one is latent 5
        assert not dense.latents[3, torch.arange(D_SAE) != 5].any()


@pytest.mark.parametrize(("arch", "options"), CONFIGS, ids=IDS)
def test_no_active_pair_at_all(arch, options):
    """Every token silent (and for TopK every selected value ≤ 0): only b_dec learns."""
    sae = make(arch, options)
    with torch.no_grad():
        for name in ("W_enc", "W_mag"):
            if hasattr(sae, name):
                getattr(sae, name).zero_()
        for name in BIASES:
            if name in dict(sae.named_parameters()):
                getattr(sae, name).fill_(-1.0)
        if arch == "jumprelu":
            sae.threshold.fill_(5.0)
    dead = torch.ones(D_SAE, dtype=torch.bool) if "k_aux" in options else None
    dense, out, grads = assert_same(sae, inputs(), dead=dead)
    assert out.active_pairs == 0 and not out.fired.any() and float(out.l0) == 0
    assert grads["b_dec"].abs().sum() > 0


@pytest.mark.parametrize("arch", ["topk", "batchtopk"])
def test_all_latents_dead(arch):
    sae = make(arch, {"k": 3, "k_aux": D_SAE})
    dense, out, _ = assert_same(sae, inputs(), dead=torch.ones(D_SAE, dtype=torch.bool))
    assert out.terms.aux > 0


def test_last_block_without_active_pairs():
    """The batch's tail block (one row) has no active pair; earlier blocks do."""
    sae = make("gated", {})
    x = inputs()
    with torch.no_grad():
        x[-1] = sae.b_dec
        sae.b_gate.fill_(-1.0)
    dense, out, _ = assert_same(sae, x)
    assert out.active_pairs > 0 and dense.latents[-1].abs().sum() == 0


def test_gathered_dot_equals_the_sampled_product(monkeypatch):
    """CUDA's gathered dot products against the CPU's sampled product and a float64 loop,
    over chunks of 7 pairs (the last one short) and tokens without pairs."""
    monkeypatch.setattr(sparse, "DOT_CHUNK_ELEMENTS", 7 * D_IN)
    g = torch.Generator().manual_seed(3)
    left = torch.randn(9, D_IN, generator=g, dtype=f64)
    right = torch.randn(D_SAE, D_IN, generator=g, dtype=f64)
    mask = torch.rand(9, D_SAE, generator=g) < 0.3
    mask[4] = False
    pairs = sparse.Pairs(*mask.nonzero().T, 9, D_SAE)
    expected = torch.stack([left[i] @ right[j] for i, j in mask.nonzero().tolist()])
    torch.testing.assert_close(pairs.gathered_dot(left, right), expected, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(pairs.dot(left, right), expected, rtol=1e-12, atol=1e-12)


def test_batchtopk_selects_across_blocks():
    """The batch's n·k largest, not each block's share: blocks keep different counts."""
    sae = make("batchtopk", {"k": 3})
    x = inputs()
    x[:4] *= 4  # the first block's activations dominate the batch's selection
    dense, out, _ = assert_same(sae, x)
    per_token = (dense.latents != 0).sum(1)
    assert per_token[:4].float().mean() > per_token[4:].float().mean()


@pytest.mark.parametrize("arch", ["topk", "batchtopk"])
def test_sparse_gradients_equal_dense_where_selection_is_grouped(arch, monkeypatch):
    """Wide enough (d_sae 96, k 3) that each token's selection, and AuxK's, is row_topk's
    grouped one rather than a plain topk."""
    monkeypatch.setattr(sparse, "BLOCK_ELEMENTS", {"cpu": 4 * 96, "cuda": 4 * 96})
    torch.manual_seed(0)
    sae = create_sae(arch, d_in=D_IN, d_sae=96, k=3, k_aux=3).to(f64)
    with torch.no_grad():
        sae.b_enc.add_(torch.randn(96, dtype=f64) * 0.3)
    assert_same(sae, inputs(), dead=torch.arange(96) % 5 == 0)


@pytest.mark.parametrize("path", ["dense", "sparse"])
@pytest.mark.parametrize("floor", [0.05, 0.5, 1e9], ids=["low", "near", "too-high"])
def test_batchtopk_selection_floor_changes_only_speed(path, floor):
    """A floor from an earlier batch, however far off, selects what no floor selects; one
    too high to leave n·k candidates is dropped for the step. The step sets the next."""
    sae = make("batchtopk", {"k": 3, "k_aux": 5})
    x, dead = inputs(), torch.arange(D_SAE) % 3 == 0

    def step():
        for p in sae.parameters():
            p.grad = None
        if path == "dense":
            out = sae.training_loss(x, 0.0, dead)
            out.loss.backward()
        else:
            out = sae.sparse_gradients(x, 0.0, dead)
        return out.loss.detach(), {n: p.grad.clone() for n, p in sae.named_parameters()}

    sae.selection_floor = None
    loss, grads = step()
    smallest_kept = sae.smallest_kept
    latents = sae.training_loss(x, 0.0).latents.detach()
    assert float(latents[latents > 0].min()) == pytest.approx(smallest_kept)
    sae.selection_floor, sae.smallest_kept = floor, 2 * smallest_kept
    floored_loss, floored_grads = step()
    assert torch.equal(floored_loss, loss)
    for name, grad in grads.items():
        assert torch.equal(floored_grads[name], grad), name
    # the smallest kept value halved since the last batch: the floor falls twice as far
    assert sae.smallest_kept == pytest.approx(smallest_kept)
    assert sae.selection_floor == pytest.approx(sae.floor_margin * smallest_kept / 2)


def test_batchtopk_sets_no_floor_when_fewer_than_nk_activations_are_positive():
    sae = make("batchtopk", {"k": 3})
    with torch.no_grad():
        sae.b_enc.fill_(-100.0)
        sae.b_enc[:2] = 100.0  # 2 positive activations per token, fewer than k = 3
    sae.sparse_gradients(inputs(), 0.0)
    assert sae.selection_floor is None


@pytest.mark.parametrize("density", [0.0, 0.003, 0.3, 1.0])
@pytest.mark.parametrize("shape", [(37, 96), (5, 13), (0, 8)])
def test_flat_nonzero_is_torchs_nonzero(density, shape):
    g = torch.Generator().manual_seed(0)
    mask = torch.rand(shape, generator=g) < density
    mask.view(-1)[-1:] = density > 0  # a true entry in the last word, where there are any
    expected = mask.view(-1).nonzero().view(-1)
    assert torch.equal(sparse.flat_nonzero(mask), expected)
    assert torch.equal(sparse.flat_nonzero(mask[1:]), mask[1:].reshape(-1).nonzero().view(-1))


def test_pairs_above_checks_each_pair_after_adding_the_bias():
    """In float32 at a bias of 1e8 (spacing 8), `product > threshold − bias` holds for small
    positive products whose `product + bias` rounds back to the threshold: those are dropped,
    as the dense comparison drops them."""
    g = torch.Generator().manual_seed(0)
    x, weight = torch.randn(29, D_IN, generator=g), torch.randn(D_IN, D_SAE, generator=g)
    bias = torch.full((D_SAE,), 1e8)
    bias[:3] = 0.0  # some latents compared without rounding
    pre = torch.addmm(bias, x, weight)
    pairs, values = sparse.pairs_above(x, weight, bias, 1e8 * (bias > 0))
    expected = (pre > 1e8 * (bias > 0)).nonzero()
    assert 0 < len(pairs) < ((x @ weight) > 0).sum()  # some pairs dropped after the check
    assert torch.equal(torch.stack([pairs.rows, pairs.cols], 1), expected)
    torch.testing.assert_close(values, pre[expected[:, 0], expected[:, 1]])


def test_bf16_encoder_product_is_close():
    sae = make("relu", {}).float()
    x = inputs().float()
    exact = sae.sparse_gradients(x, 0.4)
    exact_grad = sae.W_dec.grad.clone()
    bf16 = sae.sparse_gradients(x, 0.4, matmul_dtype=torch.bfloat16)
    assert bf16.loss.dtype == torch.float32
    assert float(bf16.loss) == pytest.approx(float(exact.loss), rel=0.05)
    grads = sae.W_dec.grad.flatten(), exact_grad.flatten()
    assert torch.nn.functional.cosine_similarity(*grads, dim=0) > 0.98


# --- whole runs --------------------------------------------------------------------------------

RUN_SAES = [
    {"arch": "relu", "d_sae": 256, "lr": 3e-3, "sparsity_coef": 1.0},
    {"arch": "gated", "d_sae": 256, "lr": 3e-3, "sparsity_coef": 1.0},
    {"arch": "jumprelu", "d_sae": 256, "lr": 3e-3, "sparsity_coef": 0.3},
    {"arch": "topk", "d_sae": 256, "lr": 3e-3, "options": {"k": 4}},
    {"arch": "batchtopk", "d_sae": 256, "lr": 3e-3, "options": {"k": 4}},
]


@pytest.fixture(scope="module")
def synthetic():
    return SyntheticFeatures(96, 32, mean_active=4.0, seed=0).sample(256 * 300).float()


def run(tmp_path, acts, step, steps=300):
    config = TrainConfig(saes=RUN_SAES, batch_size=256, tokens=256 * steps, step=step,
                         dead_tokens=256 * 20, checkpoint_every=0, log_every=steps)
    out = tmp_path / step
    saes = Trainer(config, out).fit(acts.split(256))
    return saes, json.loads((out / "run.json").read_text())


def final_metrics(sae, acts):
    with torch.no_grad():
        f = sae.encode(acts)
        x_hat = sae.decode(f)
    fvu = (acts - x_hat).pow(2).sum() / (acts - acts.mean(0)).pow(2).sum()
    return float((f != 0).sum(1).float().mean()), float(fvu)


@pytest.mark.slow
def test_sparse_run_ends_where_the_dense_run_ends(tmp_path, synthetic):
    dense, _ = run(tmp_path, synthetic, "dense")
    sparse_saes, record = run(tmp_path, synthetic, "sparse")
    for name, sae in dense.items():
        other = sparse_saes[name]
        l0, fvu = final_metrics(sae, synthetic[:8192])
        l0_s, fvu_s = final_metrics(other, synthetic[:8192])
        assert l0_s == pytest.approx(l0, rel=0.01), name
        assert fvu_s == pytest.approx(fvu, rel=0.01), name
        if name == "jumprelu":  # see test_jumprelu_paths_follow_one_trajectory_in_float64
            continue
        for key, value in sae.state_dict().items():
            if value.is_floating_point():
                gap = (other.state_dict()[key] - value).norm() / value.norm().clamp_min(1e-12)
                assert gap < 1e-3, (name, key, float(gap))
    assert all(p["sparse"]["steps"] == 300 for p in record["timing"]["paths"].values())


@pytest.mark.slow
def test_jumprelu_paths_follow_one_trajectory_in_float64(synthetic):
    """In float32 a JumpReLU run on either path leaves the other's weights by ~1e-2 after 300
    steps while L0 and FVU agree within 0.1%: a rounding-level difference moves a pair across
    the edge of the straight-through window, which changes θ's gradient by λ/(nε) at once,
    and the trajectories part. In float64 they stay one trajectory."""
    acts = synthetic.double() * (32 / synthetic.double().pow(2).sum(-1).mean()).sqrt()
    saes = []
    for path in ("dense", "sparse"):
        slot = TrainingSlot(SAEConfig("jumprelu", 256, lr=3e-3, sparsity_coef=0.3), 32, "cpu", 0)
        slot.sae.double()
        slot.sae.init_from_data(acts[:4096])
        for batch in acts.split(256):
            slot.step(batch, 1.0, 1.0, 256 * 20, path)
        saes.append(slot.sae.state_dict())
    for key, value in saes[0].items():
        gap = (saes[1][key] - value).norm() / value.norm()
        assert gap < 1e-6, (key, float(gap))  # θ's gradient goes through its fp32 copy


@pytest.mark.slow
def test_auto_runs_dense_then_sparse_and_records_it(tmp_path, synthetic, monkeypatch):
    monkeypatch.setitem(slot_module.SPARSE_MIN_WORK, "cpu", 1)  # these SAEs are tiny
    monkeypatch.setitem(slot_module.SPARSE_CROSSOVER, "cpu", 0.25)  # and reach L0 ≈ 20 of 256
    _, record = run(tmp_path, synthetic, "auto")
    for name, paths in record["timing"]["paths"].items():
        assert paths["dense"]["steps"] >= 1, name  # the first step knows no density yet
        assert paths["dense"]["steps"] + paths["sparse"]["steps"] == 300
        assert paths["sparse"]["steps"] >= 10, name  # L0 ≈ 20 of 256 latents by the end
        assert paths["sparse"]["seconds"] > 0 and paths["dense"]["seconds"] > 0


def test_auto_follows_the_previous_batch_density_on_large_enough_products():
    slot = TrainingSlot(SAEConfig("relu", 4096), 512, "cpu", 0)
    assert slot.choose_step("auto", 256) == "dense"  # no density measured yet
    slot.density = 0.01
    assert slot.choose_step("auto", 256) == "sparse"  # 2^29 multiply-adds per product
    assert slot.choose_step("auto", 64) == "dense"  # 2^27: the small ops would dominate
    assert slot.choose_step("dense", 256) == "dense"
    slot.density = 0.9
    assert slot.choose_step("auto", 256) == "dense"
    assert slot.choose_step("sparse", 256) == "sparse"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize(("arch", "options"), CONFIGS, ids=IDS)
def test_sparse_gradients_equal_dense_on_cuda(arch, options):
    sae = make(arch, options).cuda()
    dead = (torch.arange(D_SAE) % 3 == 0).cuda() if "k_aux" in options else None
    assert_same(sae, inputs().cuda(), dead=dead)


@pytest.mark.parametrize("path", ["dense", "sparse"])
@pytest.mark.parametrize(("arch", "options"), CONFIGS, ids=IDS)
def test_bf16_steps_match_float32_closely(arch, options, path):
    """bfloat16 autocast (dense) or a bfloat16 encoder product (sparse) over float32 weights."""
    x = inputs().float()
    losses = {}
    for precision in ("float32", "bf16"):
        cfg = SAEConfig(arch, D_SAE, lr=1e-3, sparsity_coef=0.4, options=options)
        slot = TrainingSlot(cfg, D_IN, "cpu", 0, precision)
        out = [slot.step(x, 1.0, 1.0, 10**9, path) for _ in range(3)][-1]
        assert all(p.dtype == torch.float32 for p in slot.sae.parameters())
        losses[precision] = float(out.loss)
    assert losses["bf16"] == pytest.approx(losses["float32"], rel=0.03)
