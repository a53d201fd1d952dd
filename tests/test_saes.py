"""The architectures in gated_sae.saes, checked formula by formula against float64 references
written here from docs/formulas.md, hand-worked cases and properties."""

import copy
import json
import math

import pytest
import torch
from safetensors.torch import load_file, save_file

import gated_sae
from gated_sae import ConfigError, DataError, create_sae, load_sae
from gated_sae.distributed import World
from gated_sae.saes import BatchTopKSAE, JumpReLUSAE, variant_label, variant_order
from gated_sae.saes import gated as gated_module
from gated_sae.saes.jumprelu import JumpReLUFunction, StepFunction
from gated_sae.saes.topk import normalized_squared_error, row_topk

pytestmark = pytest.mark.usefixtures("single_thread")  # tiny tensors: threads only contend
D_IN, D_SAE = 8, 24
CONFIGS = [
    ("relu", {}),
    ("relu", {"decoder_norm_l1": True}),
    ("gated", {}),
    ("gated", {"b_mag": False}),
    ("gated", {"r_mag": False}),
    ("gated", {"tied": False}),
    ("gated", {"ri_l1": True}),
    ("topk", {"k": 3, "k_aux": 5, "aux_coef": 0.25}),
    ("batchtopk", {"k": 3}),
    ("jumprelu", {"bandwidth": 0.01, "threshold_init": 0.002}),
]
CONFIG_IDS = [a + "".join(f"-{k}={v}" for k, v in o.items()) for a, o in CONFIGS]
GATED_OPTIONS = [{}, {"b_mag": False}, {"r_mag": False}, {"tied": False}, {"ri_l1": True}]
SCALE = {"W_enc": 0.5, "W_mag": 0.5, "W_dec": 0.4, "b_dec": 1.0, "b_enc": 0.5, "b_gate": 0.5,
         "b_mag": 0.5, "r_mag": 0.3}
f64 = torch.float64


def make(arch, seed=0, **options):
    """An SAE with non-trivial random weights, biases, r_mag and thresholds (disabled parts,
    being buffers, stay zero)."""
    torch.manual_seed(seed)
    sae = create_sae(arch, d_in=D_IN, d_sae=D_SAE, **options)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sae.named_parameters():
            if name == "threshold":
                p.copy_(torch.rand(p.shape, generator=g) + 0.2)
            else:
                p.copy_(torch.randn(p.shape, generator=g) * SCALE[name])
        if isinstance(sae, BatchTopKSAE):
            sae.threshold.fill_(0.6)
            sae.threshold_initialised.fill_(True)
    return sae


def inputs(n=32, seed=1, dtype=f64):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(n, D_IN, generator=g) * 1.5 + 0.5).to(dtype)


def leaves(sae):
    """float64 copies of every tensor; the trained ones require grad."""
    trained = dict(sae.named_parameters())
    return {k: v.detach().to(f64).clone().requires_grad_(k in trained)
            for k, v in sae.state_dict().items() if v.is_floating_point()}


def sq(x, x_hat):
    return (x - x_hat).pow(2).sum(-1).mean()


def relu(t):
    return t.clamp(min=0)


def keep_top(pre, k):
    """ReLU of the k largest entries of each row, zero elsewhere."""
    kth = pre.sort(dim=-1, descending=True).values[:, k - 1 : k]
    return torch.where(pre >= kth, relu(pre), 0.0)


def reference_encode(sae, x):
    p = leaves(sae)
    xc = x.to(f64) - p["b_dec"]
    if sae.architecture == "gated":
        # W_mag = diag(exp(r_mag)) W_gate; stored [d_in, d_sae], so the scaling is per column.
        w_mag = p["W_mag"] if "W_mag" in p else p["W_enc"] * p["r_mag"].exp()
        pi_gate = xc @ p["W_enc"] + p["b_gate"]
        return (pi_gate > 0) * relu(xc @ w_mag + p["b_mag"])
    pre = xc @ p["W_enc"] + p["b_enc"]
    if sae.architecture == "relu":
        return relu(pre)
    if sae.architecture == "topk":
        return keep_top(pre, sae.k)
    return torch.where(pre > p["threshold"], pre, 0.0)  # jumprelu; batchtopk at inference


def reference_decode(sae, f):
    p = leaves(sae)
    return f.to(f64) @ p["W_dec"] + p["b_dec"]


def close(actual, expected, tol=1e-10, msg=""):
    torch.testing.assert_close(actual, expected, atol=tol, rtol=tol, msg=msg or None)


def check_loss(sae, out, loss, terms, p, tol=1e-10):
    """Loss and its terms match the reference, and so does every parameter's gradient."""
    close(out.loss, loss, tol)
    assert list(out.terms.present()) == list(terms)
    for name, value in terms.items():
        close(getattr(out.terms, name), value, tol, msg=name)
    out.loss.backward()
    loss.backward()
    for name, param in sae.named_parameters():
        ref = p[name].grad if p[name].grad is not None else torch.zeros_like(p[name])
        got = param.grad if param.grad is not None else torch.zeros_like(param)
        close(got, ref, tol, msg=f"gradient of {name}")


# --- initialisation --------------------------------------------------------------------------


@pytest.mark.parametrize(("arch", "options"), CONFIGS, ids=CONFIG_IDS)
def test_every_trained_parameter_but_b_dec_names_its_latent_axis(arch, options):
    sae = create_sae(arch, d_in=D_IN, d_sae=D_SAE, **options)
    latent = {name: (p, axis) for name, p, axis in sae.latent_parameters()}
    assert set(latent) == set(dict(sae.named_parameters())) - {"b_dec"}
    for name, (p, axis) in latent.items():
        assert p is getattr(sae, name) and p.shape[axis] == D_SAE, name
    encoders = {"W_enc", "W_mag"} & set(latent)  # [d_in, d_sae]
    assert set(sae.input_weights) == encoders
    assert all(latent[name][0].shape == (D_IN, D_SAE) and latent[name][1] == 1 for name in encoders)


@pytest.mark.parametrize(("arch", "options"), CONFIGS, ids=CONFIG_IDS)
def test_latent_shards_are_contiguous_slices_of_every_latent_tensor(arch, options):
    """Two ranks' shards (25 latents split 13 + 12) put back together along each tensor's
    latent axis give the whole SAE; b_dec, which every rank needs whole, is not split."""
    whole = create_sae(arch, d_in=D_IN, d_sae=D_SAE + 1, **options)
    shards = []
    for rank in range(2):
        shard = copy.deepcopy(whole)
        shard.shard_latents_(World(rank, 2))
        shards.append(shard.state_dict())
    axes = {name: axis for name, _, axis in whole.latent_tensors()}
    assert {k for k, t in whole.state_dict().items() if t.ndim and k != "b_dec"} == set(axes)
    for key, tensor in whole.state_dict().items():
        if key in axes:
            assert [s[key].shape[axes[key]] for s in shards] == [13, 12]
            assert torch.equal(torch.cat([s[key] for s in shards], axes[key]), tensor), key
        else:
            assert all(torch.equal(s[key], tensor) for s in shards), key


@pytest.mark.parametrize(("arch", "options", "label"), [
    ("relu", {}, "relu"),
    ("relu", {"decoder_norm_l1": True}, "relu decoder-norm L1"),
    ("relu", {"decoder_norm_l1": False}, "relu"),
    ("gated", {"b_mag": True}, "gated"),
    ("gated", {"b_mag": False}, "gated no b_mag"),
    ("gated", {"r_mag": False}, "gated no r_mag"),
    ("gated", {"tied": False, "b_mag": False}, "gated no b_mag untied"),
    ("gated", {"ri_l1": True, "tied": False}, "gated untied RI-L1"),
    ("topk", {"k": 3}, "topk"),
    ("batchtopk", {"k": 3, "aux_coef": 0.5}, "batchtopk"),
    ("jumprelu", {"bandwidth": 0.1}, "jumprelu"),
])
def test_variant_label(arch, options, label):
    assert variant_label(arch, options) == label


def test_variant_order_lists_each_architecture_then_its_ablations():
    assert variant_order() == ("relu", "gated", "gated no b_mag", "gated no r_mag",
                               "gated untied", "gated RI-L1", "topk", "batchtopk", "jumprelu")


@pytest.mark.parametrize(("arch", "options"), CONFIGS, ids=CONFIG_IDS)
def test_initialisation(arch, options):
    sae = create_sae(arch, d_in=D_IN, d_sae=D_SAE, **options)
    close(sae.W_dec.norm(dim=1), torch.ones(D_SAE), 1e-6)
    assert torch.equal(sae.W_enc, sae.W_dec.T)
    for name in ("b_dec", "b_enc", "b_gate", "b_mag", "r_mag"):
        if hasattr(sae, name):
            assert not getattr(sae, name).any(), name
    sample = inputs(dtype=torch.float32)
    sae.init_from_data(sample)
    close(sae.b_dec, sample.mean(0), 1e-6)


# --- encode / decode -------------------------------------------------------------------------


@pytest.mark.parametrize(("arch", "options"), CONFIGS, ids=CONFIG_IDS)
def test_encode_decode_match_reference(arch, options):
    sae = make(arch, **options).double()
    x = inputs()
    with torch.no_grad():
        f = sae.encode(x)
        expected = reference_encode(sae, x)
        assert 0.05 < (expected != 0).double().mean() < 0.95  # the test can tell ReLU from gate
        close(f, expected)
        close(sae.decode(f), reference_decode(sae, expected))
        close(sae(x), reference_decode(sae, expected))


@pytest.mark.parametrize("k", [1, 3, 12])
def test_row_topk_finds_each_rows_k_largest(k):
    """The grouped selection (96 = 4·8·12 columns or more) against torch's, with rows of
    ties, of few finite entries, and with the winners crowded into one group."""
    g = torch.Generator().manual_seed(k)
    pre = torch.randn(40, 384, generator=g, dtype=torch.float64)
    pre[0] = 1.0
    pre[1] = -math.inf
    pre[1, 7 : 7 + k] = torch.arange(k, dtype=torch.float64)
    i = torch.arange(k)  # crowded: groups are every 48th column, 8 to a group
    pre[2, (i % 8) * 48 + 5 + i // 8] = 10.0 + i.double()
    values, cols = row_topk(pre, k)
    assert values.shape == cols.shape == (40, k)
    assert torch.equal(pre.gather(1, cols), values)
    assert all(len(set(row)) == k for row in cols.tolist())
    expected = pre.topk(k, dim=-1).values
    assert torch.equal(values.sort(-1, descending=True).values, expected)


def test_topk_keeps_exactly_k_largest():
    sae = make("topk", k=3, k_aux=5).double()
    x = inputs()
    with torch.no_grad():
        sae.b_enc += 20.0  # every pre-activation positive: ReLU cannot drop a kept one
        f = sae.encode(x)
        pre = (x - sae.b_dec) @ sae.W_enc + sae.b_enc
    assert ((f != 0).sum(1) == 3).all()
    top3 = pre.topk(3, dim=1).values
    close(f.sort(dim=1, descending=True).values[:, :3], top3)
    close(sae.training_loss(x).latents, f)


# --- training losses ---------------------------------------------------------------------------


@pytest.mark.parametrize("decoder_norm_l1", [False, True])
def test_relu_loss(decoder_norm_l1):
    sae = make("relu", decoder_norm_l1=decoder_norm_l1).double()
    x, lam = inputs(), 0.3
    out = sae.training_loss(x, lam)
    p = leaves(sae)
    f = relu((x - p["b_dec"]) @ p["W_enc"] + p["b_enc"])
    mse = sq(x, f @ p["W_dec"] + p["b_dec"])
    # L1, or Σ_i f_i ‖W_dec,i‖ (Anthropic's April update)
    weights = p["W_dec"].norm(dim=1) if decoder_norm_l1 else torch.ones(D_SAE, dtype=f64)
    sparsity = (f * weights).sum(-1).mean()
    check_loss(sae, out, mse + lam * sparsity, {"mse": mse, "sparsity": sparsity}, p)
    close(out.latents, f)


@pytest.mark.parametrize("chunk_rows", [None, 5], ids=["one chunk", "5-row chunks"])
@pytest.mark.parametrize("options", GATED_OPTIONS, ids=str)
def test_gated_loss_and_gradients(options, chunk_rows, monkeypatch):
    if chunk_rows:  # 32 rows in chunks of 5: the cache-blocked loop, last chunk short
        monkeypatch.setattr(gated_module, "CHUNK_ELEMENTS", {"cpu": chunk_rows * D_SAE})
    sae = make("gated", **options).double()
    ri_l1, x, lam = options.get("ri_l1", False), inputs(), 0.3
    out = sae.training_loss(x, lam)
    p = leaves(sae)
    xc = x - p["b_dec"]
    w_mag = p["W_mag"] if "W_mag" in p else p["W_enc"] * p["r_mag"].exp()
    pi_gate = xc @ p["W_enc"] + p["b_gate"]
    f = (pi_gate > 0) * relu(xc @ w_mag + p["b_mag"])
    mse = sq(x, f @ p["W_dec"] + p["b_dec"])
    gate_acts = relu(pi_gate)
    if ri_l1:
        sparsity = (gate_acts * p["W_dec"].norm(dim=1)).sum(-1).mean()
        aux = sq(x, gate_acts @ p["W_dec"] + p["b_dec"])
    else:
        sparsity = gate_acts.sum(-1).mean()
        aux = sq(x, gate_acts @ p["W_dec"].detach() + p["b_dec"].detach())
    # The Heaviside passes nothing: parameters only on the gate path learn only from the
    # sparsity and auxiliary terms.
    gate_only = ["b_gate"] if sae.tied else ["b_gate", "W_enc"]
    gate_grads = torch.autograd.grad(lam * sparsity + aux, [p[n] for n in gate_only],
                                     retain_graph=True)
    (no_aux_grad,) = torch.autograd.grad(mse + lam * sparsity, [p["W_dec"]], retain_graph=True)
    check_loss(sae, out, mse + lam * sparsity + aux,
               {"mse": mse, "sparsity": sparsity, "aux": aux}, p)
    close(out.latents, f)
    for name, grad in zip(gate_only, gate_grads, strict=True):
        assert grad.abs().sum() > 0
        close(getattr(sae, name).grad, grad, msg=name)
    # The frozen decoder: the aux term reaches W_dec only in the RI-L1 variant.
    aux_reaches_decoder = not torch.allclose(sae.W_dec.grad, no_aux_grad)
    assert aux_reaches_decoder == ri_l1


@pytest.mark.parametrize("disabled", ["b_mag", "r_mag"])
def test_gated_disabled_parts_are_not_trained(disabled):
    sae = make("gated", **{disabled: False})
    assert disabled not in dict(sae.named_parameters())
    assert disabled in sae.state_dict()  # saved, as zeros, for SAELens
    opt = torch.optim.Adam(sae.parameters(), lr=0.1)
    for seed in range(3):
        opt.zero_grad()
        sae.training_loss(inputs(seed=seed, dtype=torch.float32), 0.3).loss.backward()
        opt.step()
        sae.after_step_()
    assert not getattr(sae, disabled).any()


def topk_reference(sae, x, dead, detach_residual=True):
    p = leaves(sae)
    pre = (x - p["b_dec"]) @ p["W_enc"] + p["b_enc"]
    x_hat = keep_top(pre, sae.k) @ p["W_dec"] + p["b_dec"]
    fvu = sq(x, x_hat) / sq(x, x.mean(0))
    aux = torch.zeros((), dtype=f64)
    if dead is not None and dead.any():
        e = x - x_hat
        e = e.detach() if detach_residual else e
        k_aux = min(sae.k_aux, int(dead.sum()))
        e_hat = keep_top(pre[:, dead], k_aux) @ p["W_dec"][dead]  # no bias
        aux = sq(e, e_hat) / sq(e, e.mean(0))
    return p, fvu + sae.aux_coef * aux, {"fvu": fvu, "mse": sq(x, x_hat), "aux": aux}


DEAD = {
    "none": None,
    "no-dead": torch.zeros(D_SAE, dtype=torch.bool),
    "some-dead": torch.arange(D_SAE) % 3 == 0,  # 8 dead, k_aux = 5 of them used
    "few-dead": torch.arange(D_SAE) < 2,  # fewer dead than k_aux
}


@pytest.mark.parametrize("dead", DEAD.values(), ids=DEAD.keys())
def test_topk_loss_and_auxk(dead):
    sae = make("topk", k=3, k_aux=5, aux_coef=0.25).double()
    x = inputs()
    out = sae.training_loss(x, 0.0, dead)
    p, loss, terms = topk_reference(sae, x, dead)
    assert (terms["aux"] > 0) == (dead is not None and bool(dead.any()))
    check_loss(sae, out, loss, terms, p)
    if terms["aux"] > 0:  # the detach matters: without it the gradients would differ
        p2, loss2, _ = topk_reference(sae, x, dead, detach_residual=False)
        loss2.backward()
        assert not torch.allclose(p2["W_enc"].grad, sae.W_enc.grad)


def test_auxk_uses_only_dead_latents_and_detaches_the_residual():
    sae = make("topk", k=3, k_aux=4).double()
    g = torch.Generator().manual_seed(3)
    pre = torch.randn(16, D_SAE, generator=g, dtype=f64).requires_grad_()
    residual = torch.randn(16, D_IN, generator=g, dtype=f64).requires_grad_()
    dead = DEAD["some-dead"]
    sae.auxk_loss(pre, residual, dead).backward()
    assert residual.grad is None
    assert not pre.grad[:, ~dead].any()
    assert ((pre.grad[:, dead] != 0).sum(1) <= 4).all() and pre.grad[:, dead].any()
    assert sae.auxk_loss(pre, residual, torch.zeros(D_SAE, dtype=torch.bool)) == 0
    assert sae.auxk_loss(pre, residual, None) == 0


def test_normalized_squared_error_by_hand():
    target = torch.tensor([[0.0, 0.0], [2.0, 2.0]])
    # ‖t − t̂‖² averaged = (0 + 8)/2 = 4; about the mean [1, 1]: (2 + 2)/2 = 2
    assert normalized_squared_error(target, torch.zeros(2, 2)) == 2.0


@pytest.mark.parametrize("shift", [5.0, -2.5], ids=["dense", "few-positive"])
def test_batchtopk_keeps_batch_k_largest_and_tracks_threshold(shift):
    torch.manual_seed(0)
    sae = create_sae("batchtopk", d_in=D_IN, d_sae=D_SAE, k=3).double()
    with torch.no_grad():
        sae.b_enc.fill_(shift)
    thresholds = []
    for seed in (1, 2):
        x = inputs(n=8, seed=seed)
        out = sae.training_loss(x)
        with torch.no_grad():
            acts = relu((x - sae.b_dec) @ sae.W_enc + sae.b_enc)
        kept = acts.flatten().sort(descending=True).values[: 8 * 3]
        assert shift > 0 or 0 < (kept > 0).sum() < 8 * 3
        assert (out.latents != 0).sum() == (kept > 0).sum()
        if shift > 0:  # enough positive pre-activations: exactly B·k kept, L0 varies by row
            assert (out.latents != 0).sum() == 8 * 3
            assert len(set((out.latents != 0).sum(1).tolist())) > 1
        close(out.latents, torch.where(acts >= kept[-1], acts, 0.0) * (acts > 0))
        thresholds.append(kept[kept > 0].min())
        # θ starts at the smallest kept positive activation, then moves by momentum 0.99.
        expected = thresholds[0] if seed == 1 else 0.99 * thresholds[0] + 0.01 * thresholds[1]
        close(sae.threshold, expected.expand(D_SAE))
        assert bool(sae.threshold_initialised)


def test_batchtopk_threshold_waits_for_a_positive_activation():
    sae = create_sae("batchtopk", d_in=D_IN, d_sae=D_SAE, k=3)
    with torch.no_grad():
        sae.b_enc.fill_(-1e3)
    out = sae.training_loss(inputs(dtype=torch.float32))
    assert not out.latents.any() and not sae.threshold.any()
    assert not bool(sae.threshold_initialised)


# --- JumpReLU straight-through estimators -------------------------------------------------------


def test_jumprelu_bandwidth_and_threshold_scale_with_sqrt_d_in():
    sae = create_sae("jumprelu", d_in=16, d_sae=4, bandwidth=0.01, threshold_init=0.002)
    assert sae.bandwidth == pytest.approx(0.04)
    close(sae.threshold.detach(), torch.full((4,), 0.008), 1e-7)


def tiny_jumprelu():
    """d_in = d_sae = 4, W_enc = I, biases 0: z = x. ε = 0.05·√4 = 0.1, window |z − θ| < 0.05."""
    sae = create_sae("jumprelu", d_in=4, d_sae=4, bandwidth=0.05).double()
    with torch.no_grad():
        sae.W_enc.copy_(torch.eye(4))
        sae.threshold.copy_(torch.tensor([1.0, 1.0, 2.0, 0.5]))
    x = torch.tensor([[1.03, 0.96, 2.2, 0.51], [1.2, 1.01, 1.98, 0.2]], dtype=f64)
    # z − θ: [[.03, −.04, .2, .01], [.2, .01, −.02, −.3]]; in the window per column: 1, 2, 1, 1
    return sae, x


def test_jumprelu_ste_by_hand():
    sae, x = tiny_jumprelu()
    assert sae.bandwidth == pytest.approx(0.1)
    theta = sae.threshold.detach().clone().requires_grad_()
    z = x.clone().requires_grad_()
    JumpReLUFunction.apply(z, theta, sae.bandwidth).sum().backward()
    close(theta.grad, torch.tensor([-10.0, -20.0, -20.0, -5.0], dtype=f64))  # −(θ/ε)·count
    close(z.grad, torch.tensor([[1.0, 0, 1, 1], [1, 1, 0, 0]], dtype=f64))  # H(z − θ)
    theta.grad = z.grad = None
    StepFunction.apply(z, theta, sae.bandwidth).sum().backward()
    close(theta.grad, torch.tensor([-10.0, -20.0, -10.0, -10.0], dtype=f64))  # −(1/ε)·count
    assert z.grad is None or not z.grad.any()


def test_jumprelu_l0_gradient_by_hand_through_the_loss():
    sae, x = tiny_jumprelu()
    with torch.no_grad():
        sae.W_dec.zero_()  # x̂ = 0 whatever f is, so only the L0 term moves θ
    out = sae.training_loss(x, sparsity_coef=2.0)
    close(out.terms.l0_penalty, torch.tensor(2.5, dtype=f64))  # (3 + 2) / 2 rows
    out.loss.backward()
    close(sae.threshold.grad, 2.0 * torch.tensor([-10.0, -20.0, -10.0, -10.0], dtype=f64) / 2)


def test_jumprelu_loss_matches_surrogate_reference():
    sae = make("jumprelu", bandwidth=0.1).double()
    with torch.no_grad():  # θ exactly representable in fp32, where the loss keeps it
        sae.threshold.copy_(sae.threshold.float())
    x, lam = inputs(), 0.3
    out = sae.training_loss(x, lam)
    p = leaves(sae)
    z, theta, eps = (x - p["b_dec"]) @ p["W_enc"] + p["b_enc"], p["threshold"], sae.bandwidth
    # A ramp whose θ-derivative is −(1/ε)K((z − θ)/ε), added as (ramp − ramp.detach()) so it
    # changes only gradients: ∂f/∂θ = −(θ/ε)K, ∂H/∂θ = −(1/ε)K; ∂f/∂z = H, ∂H/∂z = 0.
    ramp = ((z.detach() - theta) / eps + 0.5).clamp(0, 1)
    step = (z > theta).to(f64)
    f = z * step + theta.detach() * (ramp - ramp.detach())
    l0 = (step + ramp - ramp.detach()).sum(-1).mean()
    mse = sq(x, f @ p["W_dec"] + p["b_dec"])
    # θ's gradient passes through the fp32 copy the loss makes of it: fp32 precision there.
    check_loss(sae, out, mse + lam * l0, {"mse": mse, "l0_penalty": l0}, p, tol=1e-6)
    assert sae.threshold.grad.count_nonzero() > D_SAE // 2  # many z fell inside the window


def test_jumprelu_after_step_clamps_threshold():
    sae = make("jumprelu")
    with torch.no_grad():
        sae.threshold[:5] = -0.3
    sae.after_step_()
    assert (sae.threshold[:5] == 0).all() and (sae.threshold[5:] > 0).all()


# --- gated → jumprelu ---------------------------------------------------------------------------


@pytest.mark.parametrize("options", [o for o in GATED_OPTIONS if o.get("tied", True)], ids=str)
def test_gated_to_jumprelu_is_exact(options):
    sae = make("gated", **options).double()
    jump = sae.to_jumprelu()
    assert isinstance(jump, JumpReLUSAE) and jump.W_dec.dtype == f64
    x = inputs()
    with torch.no_grad():
        f = sae.encode(x)
        assert 0.05 < (f != 0).double().mean() < 0.95
        close(jump.encode(x), f, 1e-12)
        close(jump(x), sae(x), 1e-12)


def test_untied_gated_has_no_jumprelu_form():
    with pytest.raises(ConfigError, match="untied"):
        make("gated", tied=False).to_jumprelu()


# --- unit-norm decoder ----------------------------------------------------------------------


@pytest.mark.parametrize(("arch", "options"), CONFIGS, ids=CONFIG_IDS)
def test_remove_parallel_decoder_grad(arch, options):
    sae = create_sae(arch, d_in=D_IN, d_sae=D_SAE, **options).double()
    with torch.no_grad():  # unit rows, as in training, to float64 precision
        sae.W_dec /= sae.W_dec.norm(dim=1, keepdim=True)
    sae.remove_parallel_decoder_grad_()  # no gradient yet: nothing to do
    g0 = torch.randn(D_SAE, D_IN, dtype=f64)
    sae.W_dec.grad = g0.clone()
    sae.remove_parallel_decoder_grad_()
    w = sae.W_dec.detach()
    close((sae.W_dec.grad * w).sum(1), torch.zeros(D_SAE, dtype=f64))
    close(sae.W_dec.grad, g0 - (g0 * w).sum(1, keepdim=True) * w)


@pytest.mark.parametrize(("arch", "options"), CONFIGS, ids=CONFIG_IDS)
def test_after_step_renormalises_decoder_rows(arch, options):
    sae = make(arch, **options).double()
    free = options.get("decoder_norm_l1") or options.get("ri_l1")
    assert sae.unit_norm_decoder == (not free)
    before = sae.W_dec.detach().clone()
    sae.after_step_()
    if free:
        assert torch.equal(sae.W_dec, before)
    else:
        close(sae.W_dec.norm(dim=1), torch.ones(D_SAE, dtype=f64))
        close(sae.W_dec.detach(), before / before.norm(dim=1, keepdim=True))


# --- input-scale folding --------------------------------------------------------------------


@pytest.mark.parametrize(("arch", "options"), CONFIGS, ids=CONFIG_IDS)
def test_fold_input_scale(arch, options):
    sae, s = make(arch, **options).double(), 3.7
    folded = copy.deepcopy(sae)
    folded.fold_input_scale_(s)
    x = inputs()
    with torch.no_grad():
        f = sae.encode(s * x)
        assert f.any()
        close(folded.encode(x), f)
        close(folded(x), sae(s * x) / s)


# --- saving and loading -------------------------------------------------------------------------


@pytest.mark.parametrize(("arch", "options"), CONFIGS, ids=CONFIG_IDS)
def test_save_load_round_trip(tmp_path, arch, options):
    sae = make(arch, **options)
    meta = {"model_name": "tiny-lm", "hook_name": "blocks.0.hook_resid_post"}
    sae.save(tmp_path / "sae", metadata=meta)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sae"]  # no temporary left over
    cfg = json.loads((tmp_path / "sae" / "cfg.json").read_text())
    assert cfg["d_in"] == D_IN and cfg["d_sae"] == D_SAE and cfg["dtype"] == "float32"
    assert cfg["normalize_activations"] == "none" and cfg["apply_b_dec_to_input"] is True
    assert cfg["metadata"]["hook_name"] == meta["hook_name"]
    assert tuple(map(int, cfg["metadata"]["sae_lens_version"].split("."))) >= (6, 0, 0)
    loaded = load_sae(tmp_path / "sae")
    assert type(loaded) is type(sae) and loaded.options == sae.options
    assert loaded.state_dict().keys() == sae.state_dict().keys()
    for name, value in sae.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], value), name
    assert dict(loaded.named_parameters()).keys() == dict(sae.named_parameters()).keys()
    x = inputs(dtype=torch.float32)
    with torch.no_grad():
        assert torch.equal(loaded.encode(x), sae.encode(x))
        assert torch.equal(loaded(x), sae(x))
    if arch == "jumprelu":
        assert loaded.bandwidth == sae.bandwidth


@pytest.mark.parametrize("dtype", [f64, torch.bfloat16], ids=str)
def test_save_load_keeps_dtype(tmp_path, dtype):
    sae = make("gated").to(dtype)
    sae.save(tmp_path / "sae")
    loaded = load_sae(tmp_path / "sae")
    assert loaded.W_enc.dtype == dtype and loaded.b_gate.dtype == dtype
    x = inputs(dtype=dtype)
    with torch.no_grad():
        assert torch.equal(loaded(x), sae(x))


def test_save_replaces_atomically(tmp_path, monkeypatch):
    first, second = make("relu", seed=0), make("relu", seed=1)
    first.save(tmp_path / "sae")
    second.save(tmp_path / "sae")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sae"]
    assert torch.equal(load_sae(tmp_path / "sae").W_enc, second.W_enc)

    def disk_full(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(gated_sae.saes.base, "safetensors_bytes", disk_full)
    for name in ("sae", "new"):
        with pytest.raises(OSError, match="disk full"):
            first.save(tmp_path / name)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sae"]  # no half-written folder
    assert torch.equal(load_sae(tmp_path / "sae").W_enc, second.W_enc)


def rewrite_cfg(folder, edit):
    cfg = json.loads((folder / "cfg.json").read_text())
    (folder / "cfg.json").write_text(json.dumps(edit(cfg)))


def rewrite_weights(folder, edit):
    tensors = load_file(folder / "sae_weights.safetensors")
    save_file(edit(tensors), folder / "sae_weights.safetensors")


CORRUPTIONS = {
    "corrupt-json": ("cfg.json", lambda d: (d / "cfg.json").write_text("{not json")),
    "cfg-not-object": ("cfg.json", lambda d: (d / "cfg.json").write_text("[1, 2]")),
    "cfg-missing-d_sae": ("cfg.json", lambda d: rewrite_cfg(
        d, lambda c: {k: v for k, v in c.items() if k != "d_sae"})),
    "cfg-bad-d_in": ("cfg.json", lambda d: rewrite_cfg(d, lambda c: {**c, "d_in": "eight"})),
    "unknown-architecture": ("cfg.json", lambda d: rewrite_cfg(
        d, lambda c: {**c, "architecture": "matryoshka", "metadata": {}})),
    "truncated-weights": ("sae_weights.safetensors", lambda d: (d / "sae_weights.safetensors")
                          .write_bytes((d / "sae_weights.safetensors").read_bytes()[:100])),
    "wrong-shape": (r"sae_weights\.safetensors: W_enc", lambda d: rewrite_weights(
        d, lambda t: {**t, "W_enc": t["W_enc"].T.contiguous()})),
    "missing-tensor": ("sae_weights.safetensors", lambda d: rewrite_weights(
        d, lambda t: {k: v for k, v in t.items() if k != "b_enc"})),
}


@pytest.mark.parametrize(("named", "corrupt"), CORRUPTIONS.values(), ids=CORRUPTIONS.keys())
def test_load_bad_folder_raises_data_error(tmp_path, named, corrupt):
    make("relu").save(tmp_path / "sae")
    corrupt(tmp_path / "sae")
    with pytest.raises(DataError, match=named):
        load_sae(tmp_path / "sae")


def test_load_non_sae_folder(tmp_path):
    with pytest.raises(DataError, match="cfg.json"):
        load_sae(tmp_path)
    with pytest.raises(DataError, match="cfg.json"):
        load_sae(tmp_path / "missing")
    make("relu").save(tmp_path / "layer3")
    with pytest.raises(DataError, match="layer3"):  # points at the SAE folders inside
        load_sae(tmp_path)


CONFIG_ERRORS = [
    (("bogus", {}), "relu, gated, topk, batchtopk, jumprelu"),
    (("relu", {"l1": 1}), "decoder_norm_l1"),
    (("gated", {"tied": False, "r_mag": False}), "r_mag"),
    (("topk", {"k": D_SAE + 1}), "k must be in 1..d_sae"),
]


@pytest.mark.parametrize(("args", "message"), CONFIG_ERRORS)
def test_create_sae_config_errors(args, message):
    arch, options = args
    with pytest.raises(ConfigError, match=message):
        create_sae(arch, d_in=D_IN, d_sae=D_SAE, **options)


@pytest.mark.parametrize("d_sae", [0, -3, 2.5, True])
def test_create_sae_needs_positive_width(d_sae):
    with pytest.raises(ConfigError, match="d_sae must be a positive integer"):
        create_sae("relu", d_in=D_IN, d_sae=d_sae)


def test_topk_default_k_aux_fits_narrow_saes():
    sae = create_sae("topk", d_in=64, d_sae=16, k=4)  # d_in/2 = 32 latents do not exist
    assert 0 < sae.k_aux <= 16
    assert math.isclose(sae.aux_coef, 1 / 32)
