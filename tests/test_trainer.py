"""The trainer (gated_sae.train): schedules, input scaling and folding, one batch feeding every
SAE, the unit-norm decoder, dead latents, resampling, reruns, bad input and the run's records,
each checked against a computation written here."""

from __future__ import annotations

import copy
import itertools
import json
import math
from dataclasses import asdict

import pytest
import torch

import gated_sae.train.trainer as trainer_module
from gated_sae import ConfigError, DataError, GatedSAEError, load_sae
from gated_sae.data.batches import ShuffledBatches
from gated_sae.data.synthetic import SyntheticFeatures
from gated_sae.evaluate.metrics import activation_metrics
from gated_sae.train.schedules import lr_factor, sparsity_factor
from gated_sae.train.slot import TrainingSlot
from gated_sae.train.trainer import SAEConfig, TrainConfig, Trainer, estimate_input_scale

pytestmark = pytest.mark.usefixtures("single_thread")  # tiny tensors: threads only contend
D_IN, D_SAE, BATCH = 16, 32, 128
ARCHS = ["relu", "gated", "topk", "batchtopk", "jumprelu"]
UNIT_NORM = ["relu", "gated", "gated-untied", "topk", "batchtopk", "jumprelu"]
ALL_SAES = [
    {"arch": "relu", "d_sae": D_SAE, "sparsity_coef": 1.0},
    {"arch": "gated", "d_sae": D_SAE, "sparsity_coef": 1.0},
    {"arch": "gated", "d_sae": D_SAE, "sparsity_coef": 1.0, "options": {"tied": False},
     "name": "gated-untied"},
    {"arch": "topk", "d_sae": D_SAE, "options": {"k": 4}},
    {"arch": "batchtopk", "d_sae": D_SAE, "options": {"k": 4}},
    {"arch": "jumprelu", "d_sae": D_SAE, "sparsity_coef": 0.1},
    {"arch": "relu", "d_sae": D_SAE, "sparsity_coef": 1.0, "options": {"decoder_norm_l1": True},
     "name": "relu-l1"},
]


def raw_activations(n: int = 2048) -> torch.Tensor:
    """Synthetic activations far from unit scale: × 100 plus an offset."""
    x = SyntheticFeatures(48, D_IN, mean_active=3, seed=0).sample(n)
    return x * 100 + torch.linspace(-60.0, 40.0, D_IN)


def config(saes, steps: int = 10, **settings) -> TrainConfig:
    settings = {"lr_warmup_steps": 2, "log_every": 1, "checkpoint_every": 0, **settings}
    return TrainConfig(saes=saes, batch_size=BATCH, tokens=steps * BATCH, **settings)


def fit(out, saes, batches=None, steps: int = 10, **settings):
    batches = ShuffledBatches(raw_activations(), BATCH) if batches is None else batches
    return Trainer(config(saes, steps, **settings), out).fit(batches)


def read_log(out) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


# --- schedules ------------------------------------------------------------------------------

@pytest.mark.parametrize("step, total, warmup, decay, expected", [
    (0, 100, 10, 0.2, 0.1),  # warm-up: (step + 1) / warmup
    (4, 100, 10, 0.2, 0.5),
    (9, 100, 10, 0.2, 1.0),
    (50, 100, 10, 0.2, 1.0),  # flat
    (80, 100, 10, 0.2, 1.0),  # decay over the last 20 steps starts here
    (81, 100, 10, 0.2, 0.95),
    (90, 100, 10, 0.2, 0.5),
    (99, 100, 10, 0.2, 0.05),
    (0, 100, 0, 0.2, 1.0),  # no warm-up
    (99, 100, 10, 0.0, 1.0),  # no decay
    (6, 10, 8, 0.5, 0.8),  # warm-up and decay overlap: the smaller wins (7/8 vs 4/5)
])
def test_lr_factor(step, total, warmup, decay, expected):
    assert lr_factor(step, total, warmup, decay) == pytest.approx(expected)


@pytest.mark.parametrize("step, total, fraction, expected", [
    (0, 100, 0.05, 0.2), (2, 100, 0.05, 0.6), (4, 100, 0.05, 1.0), (60, 100, 0.05, 1.0),
    (0, 100, 0.0, 1.0), (0, 10, 0.05, 1.0),  # int(0.5) = 0 warm-up steps: no warm-up
])
def test_sparsity_factor(step, total, fraction, expected):
    assert sparsity_factor(step, total, fraction) == pytest.approx(expected)


# --- input scale ----------------------------------------------------------------------------

# --- what a config takes from its architecture ---------------------------------------------

def test_default_lr_is_the_published_one_raised_for_short_runs():
    # 3e-4 as in the Gated SAE paper; TopK and BatchTopK 2e-4 / √(d_sae / 2^14) (Gao et al.);
    # runs too short for them get 8 / steps, at most 1e-2 (TopK and BatchTopK 5e-3)
    for d_sae, topk_lr in ((1 << 14, 2e-4), (1 << 16, 1e-4), (1 << 12, 4e-4)):
        run = TrainConfig([SAEConfig(arch, d_sae) for arch in ARCHS], batch_size=8,
                          tokens=8 * 100_000)
        lrs = {s.arch: s.lr for s in run.saes}
        assert lrs == pytest.approx({"relu": 3e-4, "gated": 3e-4, "jumprelu": 3e-4,
                                     "topk": topk_lr, "batchtopk": topk_lr}, rel=1e-12)
    short = TrainConfig([SAEConfig(arch, 1 << 14) for arch in ARCHS], batch_size=8,
                        tokens=8 * 2000)
    assert {s.lr for s in short.saes} == {8 / 2000}
    shortest = TrainConfig([SAEConfig(arch, 64) for arch in ARCHS], batch_size=8, tokens=8 * 100)
    assert {s.arch: s.lr for s in shortest.saes} == {  # at most max_short_run_lr
        "relu": 1e-2, "gated": 1e-2, "jumprelu": 1e-2, "topk": 5e-3, "batchtopk": 5e-3}
    with pytest.warns(UserWarning, match=r"lr too low to train in 2000 steps; runs this short "
                                         r"need relu lr ≥ 4\.0e-03, slow lr ≥ 4\.0e-03"):
        TrainConfig([SAEConfig("relu", 64, lr=1.9e-3), SAEConfig("gated", 64, lr=2.1e-3),
                     SAEConfig("topk", 64, lr=5e-4, name="slow")], batch_size=8, tokens=16000)
    coefs = {arch: SAEConfig(arch, 64).sparsity_coef for arch in ARCHS}
    assert coefs == {"relu": 5.0, "gated": 5.0, "jumprelu": 0.5, "topk": 0.0, "batchtopk": 0.0}
    given = SAEConfig("topk", 64, lr=1e-3, sparsity_coef=2.0)  # kept as given
    assert (given.lr, given.sparsity_coef) == (1e-3, 2.0)


@pytest.mark.parametrize("arch", ARCHS)
def test_resampling_only_for_architectures_that_take_it(arch):
    if arch in ("relu", "gated"):
        assert SAEConfig(arch, 64, resample_every=10).resample_every == 10
    else:
        message = f"resample_every applies to relu and gated, not {arch}"
        with pytest.raises(ConfigError, match=message):
            SAEConfig(arch, 64, resample_every=10)


def test_input_scale_makes_mean_squared_norm_d_in():
    x = torch.randn(500, 20, generator=torch.Generator().manual_seed(0)) * 7 + 3
    s = estimate_input_scale(x)
    assert (s * x.double()).pow(2).sum(1).mean().item() == pytest.approx(20, rel=1e-9)
    with pytest.raises(DataError, match="all zero"):
        estimate_input_scale(torch.zeros(8, 4))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One run of every architecture on large-scale data, with the training slots recorded so
    the trained-space SAEs can be compared with the saved (folded) ones."""
    slots = []

    class RecordingSlot(TrainingSlot):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            slots.append(self)

    out = tmp_path_factory.mktemp("run") / "out"
    acts = raw_activations()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(trainer_module, "TrainingSlot", RecordingSlot)
            cfg = config(ALL_SAES, steps=30, log_every=7, lr_warmup_steps=5)
            for s in cfg.saes:
                s.lr = 1e-2
            result = Trainer(cfg, out).fit(ShuffledBatches(acts, BATCH, seed=3))
    finally:
        torch.set_num_threads(threads)
    return {"out": out, "cfg": cfg, "acts": acts, "result": result,
            "slots": {s.cfg.name: s for s in slots},
            "first": torch.cat(list(itertools.islice(
                ShuffledBatches(acts, BATCH, seed=3),
                min(cfg.steps, math.ceil(trainer_module.SCALE_SAMPLE_TOKENS / BATCH)))))}


def test_input_scale_is_estimated_on_the_first_batches(trained):
    run = json.loads((trained["out"] / "run.json").read_text())
    first = trained["first"].double()
    assert run["input_scale"] == pytest.approx(math.sqrt(D_IN / first.pow(2).sum(1).mean()))
    assert run["d_in"] == D_IN


@pytest.mark.parametrize("name", [s.get("name", s["arch"]) for s in ALL_SAES])
def test_saved_sae_maps_raw_activations_to_raw_reconstructions(trained, name):
    """Saved folder on x == (trained-space SAE on s·x) / s, and its raw FVU matches the log."""
    out, acts = trained["out"], trained["acts"]
    s = json.loads((out / "run.json").read_text())["input_scale"]
    saved = load_sae(out / name).double()
    in_training = copy.deepcopy(trained["slots"][name].sae).double()  # .double() is in place
    x = acts[:512].double()
    with torch.no_grad():
        torch.testing.assert_close(saved.encode(x), in_training.encode(s * x), rtol=1e-5,
                                   atol=1e-5)
        torch.testing.assert_close(saved(x), in_training(s * x) / s, rtol=1e-5, atol=1e-4)
    if name == "batchtopk":  # trains on a batch's top B·k but infers with a lagging EMA θ
        return
    last = [r for r in read_log(out) if r["sae"] == name][-1]
    logged_fvu = last["fvu"] if "fvu" in last else last["mse"] / (s**2 * acts.var(0).sum())
    raw_fvu = activation_metrics(load_sae(out / name), acts)["fvu"]
    assert raw_fvu == pytest.approx(float(logged_fvu), rel=0.15)
    assert raw_fvu < 0.8  # the SAE learnt something, so the comparison means something


@pytest.mark.parametrize("name", UNIT_NORM)
def test_decoder_rows_have_unit_norm_in_training_space(trained, name):
    s = json.loads((trained["out"] / "run.json").read_text())["input_scale"]
    in_training = trained["slots"][name].sae.W_dec.detach()
    saved = load_sae(trained["out"] / name).W_dec * s
    for rows in (in_training, saved):
        torch.testing.assert_close(rows.norm(dim=1), torch.ones(D_SAE), rtol=0, atol=1e-5)


def test_decoder_norm_l1_trains_by_plain_adam_with_decoder_norms_free():
    """With decoder_norm_l1 a step is Adam on the loss and nothing more: no projection of the
    decoder gradient, no renormalisation (against torch.optim.Adam run by hand)."""
    cfg = SAEConfig("relu", D_SAE, lr=1e-2, sparsity_coef=1.0, options={"decoder_norm_l1": True})
    slot = TrainingSlot(cfg, D_IN, "cpu", 0)
    reference = copy.deepcopy(slot.sae)
    adam = torch.optim.Adam(reference.parameters(), lr=1e-2, betas=reference.adam_betas)
    x = torch.randn(BATCH, D_IN, generator=torch.Generator().manual_seed(0))
    for _ in range(3):
        slot.step(x, 1.0, 1.0, 10**9)
        adam.zero_grad()
        reference.training_loss(x, 1.0).loss.backward()
        adam.step()
    for name, value in reference.named_parameters():
        torch.testing.assert_close(slot.sae.get_parameter(name), value, msg=name)
    norms = slot.sae.W_dec.detach().norm(dim=1)
    assert (norms - 1).abs().max() > 1e-3


# --- one batch, many SAEs -------------------------------------------------------------------

def test_an_sae_trains_the_same_whatever_shares_its_run(tmp_path):
    relu = {"arch": "relu", "d_sae": D_SAE}
    fit(tmp_path / "pair", [{"arch": "gated", "d_sae": D_SAE}, relu])
    fit(tmp_path / "alone", [relu])
    pair, alone = load_sae(tmp_path / "pair/relu"), load_sae(tmp_path / "alone/relu")
    for name, value in alone.state_dict().items():
        assert torch.equal(pair.state_dict()[name], value), name


def test_saes_differing_in_lr_or_coefficient_start_from_the_same_weights():
    def init(seed=0, **changes):
        cfg = SAEConfig(**{"arch": "gated", "d_sae": D_SAE, **changes})
        return TrainingSlot(cfg, D_IN, "cpu", seed).sae.state_dict()

    base = init()
    for other in (init(lr=1e-2), init(sparsity_coef=9.0, name="other")):
        assert all(torch.equal(base[k], v) for k, v in other.items())
    for other in (init(seed=1), init(options={"b_mag": False})):
        assert not torch.equal(base["W_dec"], other["W_dec"])


# --- dead latents ---------------------------------------------------------------------------

def test_tokens_since_fired_counts_per_latent():
    """Latent j fires exactly on inputs with x_j = 1 (W_enc = I, b_enc = −½, b_dec = 0)."""
    slot = TrainingSlot(SAEConfig("relu", 8, lr=1e-9, sparsity_coef=0.0), 8, "cpu", 0)
    with torch.no_grad():
        slot.sae.W_enc.copy_(torch.eye(8))
        slot.sae.b_enc.fill_(-0.5)
        slot.sae.b_dec.zero_()
    eye = torch.eye(8)
    batches = [eye[[0, 1] * 8], eye[[1, 2] * 8], eye[[2] * 16]]
    expected = [[0, 0, 16, 16, 16, 16, 16, 16], [16, 0, 0, 32, 32, 32, 32, 32],
                [32, 16, 0, 48, 48, 48, 48, 48]]
    for x, counts in zip(batches, expected, strict=True):
        out = slot.step(x, 1.0, 1.0, dead_tokens=10**9)
        assert slot.tokens_since_fired.tolist() == counts
        assert out.l0.item() == 1.0


def test_auxk_gets_the_dead_latents():
    """A latent with a small positive pre-activation never makes the top k, so only AuxK can
    give it a gradient, and only once it counts as dead."""
    grads = {}
    for dead in (False, True):
        slot = TrainingSlot(SAEConfig("topk", D_SAE, lr=1e-3, options={"k": 2}), D_IN, "cpu", 0)
        with torch.no_grad():
            slot.sae.W_enc[:, 0] = 0.0
            slot.sae.b_enc[0] = 0.01
        slot.tokens_since_fired[0] = 1000 if dead else 0
        x = torch.randn(64, D_IN, generator=torch.Generator().manual_seed(0)) * 2
        out = slot.step(x, 1.0, 1.0, dead_tokens=1000)
        grads[dead] = (slot.sae.b_enc.grad[0].item(), out.terms.aux.item())
        assert slot.tokens_since_fired[0].item() == (1064 if dead else 64)  # never fired
    assert grads[False] == (0.0, 0.0)
    assert grads[True][0] != 0.0 and grads[True][1] > 0.0


@pytest.mark.parametrize("arch, options, d_in, d_sae", [
    ("relu", {}, D_IN, D_SAE),
    ("gated", {}, D_IN, D_SAE),
    ("gated", {"tied": False}, D_IN, D_SAE),
    ("relu", {}, 24, 24),  # b_dec has the shape of a per-latent bias: it must not be touched
    ("gated", {}, 24, 24),
])
def test_resample_dead(arch, options, d_in, d_sae):
    slot = TrainingSlot(SAEConfig(arch, d_sae, lr=1e-2, sparsity_coef=0.1, options=options),
                        d_in, "cpu", 0)
    sae, opt = slot.sae, slot.optimizer
    gen = torch.Generator().manual_seed(0)
    warm = torch.randn(64, d_in, generator=gen)
    for _ in range(3):  # gives every parameter Adam moments
        slot.step(warm, 1.0, 1.0, dead_tokens=10**9)
    x = torch.randn(64, d_in, generator=gen) * 0.1
    x[5] = torch.randn(d_in, generator=gen) * 30  # by far the worst-reconstructed input
    with torch.no_grad():
        loss = (x - sae(x)).pow(2).sum(1)
    assert loss[5] ** 2 > 1e6 * (loss.pow(2).sum() - loss[5] ** 2)

    encoders = [n for n in ("W_enc", "W_mag") if hasattr(sae, n)]  # [d_in, d_sae]: latents on 1
    latent_dim = {n: 1 if n in encoders else 0 for n, _ in sae.named_parameters()}
    # Dead: latents whose moments are non-zero now, so that zeroing them shows.
    moving = opt.state[sae.W_dec]["exp_avg_sq"].sum(1) > 0
    dead = torch.nonzero(moving).flatten()[:3]
    alive = torch.ones(d_sae, dtype=torch.bool)
    alive[dead] = False
    params = dict(sae.named_parameters())
    before = {n: p.detach().clone() for n, p in params.items()}
    moments = {n: {m: v.clone() for m, v in opt.state[p].items() if m != "step"}
               for n, p in params.items()}
    assert slot.resample_dead(x, 100) == 0  # none dead yet
    assert all(torch.equal(p, before[n]) for n, p in params.items())

    slot.tokens_since_fired[dead] = 100
    assert slot.resample_dead(x, 100) == len(dead)
    direction = x[5] - before["b_dec"]
    direction = direction / direction.norm()
    enc_norm = before["W_enc"][:, alive].norm(dim=0).mean()
    torch.testing.assert_close(sae.W_dec[dead], direction.expand(len(dead), -1))
    for name in encoders:
        torch.testing.assert_close(getattr(sae, name)[:, dead],
                                   0.2 * enc_norm * direction[:, None].expand(-1, len(dead)))
    for name, p in params.items():
        if name == "b_dec":
            assert torch.equal(p, before[name])
            assert all(torch.equal(opt.state[p][m], v) for m, v in moments[name].items())
            continue
        dim = latent_dim[name]
        if p.ndim == 1:
            assert torch.equal(p[dead], torch.zeros(len(dead))), name
        assert torch.equal(p.index_select(dim, alive.nonzero().flatten()),
                           before[name].index_select(dim, alive.nonzero().flatten())), name
        for m, v in moments[name].items():
            now = opt.state[p][m]
            assert now.index_select(dim, dead).abs().sum() == 0, (name, m)
            assert v.index_select(dim, dead).abs().sum() > 0 or m == "exp_avg", (name, m)
            keep = alive.nonzero().flatten()
            assert torch.equal(now.index_select(dim, keep), v.index_select(dim, keep)), (name, m)
    assert slot.tokens_since_fired[dead].tolist() == [0] * len(dead)


def test_resampling_in_a_run_is_logged(tmp_path):
    # Strong L1 from the start kills latents; resampling every 4 steps revives them.
    fit(tmp_path / "out", [{"arch": "relu", "d_sae": D_SAE, "sparsity_coef": 50.0, "lr": 0.2,
                            "resample_every": 4}], steps=12, sparsity_warmup_fraction=0.0)
    rows = read_log(tmp_path / "out")
    assert list(rows[3])[-3:] == ["l0", "resampled", "dead_fraction"]
    counts = [r.get("resampled") for r in rows]
    assert [c is not None for c in counts] == [(i + 1) % 4 == 0 for i in range(12)]
    assert sum(c for c in counts if c) > 0


# --- reruns and bad input -------------------------------------------------------------------

def test_finished_run_rerun_returns_without_training(tmp_path):
    saes = [{"arch": "relu", "d_sae": D_SAE}, {"arch": "topk", "d_sae": D_SAE,
                                                "options": {"k": 4}}]
    first = fit(tmp_path / "out", saes)
    stamps = {p: p.stat().st_mtime_ns for p in (tmp_path / "out").rglob("*")}
    again = fit(tmp_path / "out", saes, batches=iter(()))  # training would run out at once
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "out").rglob("*")} == stamps
    for name, sae in first.items():
        assert all(torch.equal(v, again[name].state_dict()[k])
                   for k, v in sae.state_dict().items())
    with pytest.raises(ConfigError, match="different config"):
        fit(tmp_path / "out", saes, steps=11)


def test_diverging_sae_is_named(tmp_path):
    saes = [{"arch": "relu", "d_sae": D_SAE}, {"arch": "relu", "d_sae": D_SAE, "lr": 1e30,
                                               "name": "boom"}]
    with pytest.raises(GatedSAEError, match="SAE boom diverged"):
        fit(tmp_path / "out", saes)


def _stream(n_good: int, bad: float | None = None):
    for i, x in enumerate(ShuffledBatches(raw_activations(), BATCH)):
        if i == n_good:
            if bad is None:
                return
            x = x.clone()
            x[7, 3] = bad
        yield x


@pytest.mark.parametrize("batches, message", [
    (lambda: _stream(0, float("nan")), "batch 0 contains NaN"),
    (lambda: _stream(3, float("nan")), "batch 3 contains NaN"),
    (lambda: _stream(4, float("inf")), "batch 4 contains NaN or Inf"),
    (lambda: _stream(6), "ran out after 6 batches; the run needs 10"),
], ids=["nan-first", "nan", "inf", "ran-out"])
def test_bad_batches(tmp_path, batches, message):
    with pytest.raises(DataError, match=message):
        fit(tmp_path / "out", [{"arch": "relu", "d_sae": D_SAE}], batches=batches())


# --- what a run records ---------------------------------------------------------------------

def test_metrics_log_has_a_line_per_sae_per_log_step(trained):
    cfg, rows = trained["cfg"], read_log(trained["out"])
    log_steps = [7, 14, 21, 28, 30]  # every 7 steps, and the last
    names = [s.name for s in cfg.saes]
    assert [(r["step"], r["sae"]) for r in rows] == [(t, n) for t in log_steps for n in names]
    terms = {"relu": ["mse", "sparsity"], "gated": ["mse", "sparsity", "aux"],
             "topk": ["fvu", "mse", "aux"], "batchtopk": ["fvu", "mse", "aux"],
             "jumprelu": ["mse", "l0_penalty"]}
    for r in rows:
        sae_cfg = next(s for s in cfg.saes if s.name == r["sae"])
        assert list(r) == ["step", "tokens", "sae", "lr", "sparsity_coef", "loss",
                           *terms[sae_cfg.arch], "l0", "dead_fraction"]
        assert r["tokens"] == r["step"] * BATCH
        assert r["lr"] == pytest.approx(1e-2 * lr_factor(r["step"] - 1, 30, 5, 0.2))
        assert 0 <= r["dead_fraction"] <= 1 and 0 <= r["l0"] <= D_SAE
        if sae_cfg.arch in ("relu", "gated"):  # the loss is the sum of its logged terms
            total = r["mse"] + r["sparsity_coef"] * r["sparsity"] + r.get("aux", 0.0)
            assert r["loss"] == pytest.approx(total, rel=1e-5)
            assert r["sparsity_coef"] == pytest.approx(sae_cfg.sparsity_coef)
        if sae_cfg.arch == "topk":
            assert r["l0"] <= 4 and r["loss"] == pytest.approx(r["fvu"] + r["aux"] / 32)
        if sae_cfg.arch == "batchtopk":
            assert r["l0"] == pytest.approx(4)
        if sae_cfg.arch == "jumprelu":
            assert {"mse", "l0"} <= set(r)


def test_run_json_records_config_versions_seed(trained):
    run = json.loads((trained["out"] / "run.json").read_text())
    assert run["finished"] is True
    assert run["config"] == asdict(trained["cfg"]) and run["config"]["seed"] == 0
    assert run["versions"]["torch"] == torch.__version__
    assert {"gated_sae", "python"} <= set(run["versions"])
    assert not (trained["out"] / "checkpoint.pt").exists()


# --- training curves and the training-stream dead fraction ----------------------------------

class _Interrupted(Exception):
    pass


def _interruptible(stop_after=None):
    """Shuffled batches of `raw_activations` that raise _Interrupted at batch `stop_after`,
    and an evaluation of FVU and L0 on held-out activations (returned too)."""
    acts, heldout = raw_activations(), raw_activations(256) * 1.1

    def evaluate(trained):
        return {name: {k: activation_metrics(sae, heldout)[k] for k in ("fvu", "l0")}
                for name, sae in trained.items()}

    def batches():
        for i, batch in enumerate(ShuffledBatches(acts, BATCH, seed=1).iter_from(0)):
            if i == stop_after:
                raise _Interrupted
            yield batch

    return batches(), evaluate, heldout


def _curve_run(out, stop_after=None):
    """relu and topk for 12 steps, evaluated every 5 steps on raw held-out activations."""
    saes = [{"arch": "relu", "d_sae": D_SAE, "lr": 1e-2}, {"arch": "topk", "d_sae": D_SAE,
                                                           "options": {"k": 4}}]
    batches, evaluate, heldout = _interruptible(stop_after)
    cfg = config(saes, steps=12, eval_every=5, checkpoint_every=4, dead_tokens=3 * BATCH)
    trainer = Trainer(cfg, out)
    return trainer, trainer.fit(batches, evaluate), heldout


def test_curves_are_the_saes_measured_during_training_and_resume_the_same(tmp_path):
    trainer, result, heldout = _curve_run(tmp_path / "whole")
    rows = [json.loads(line) for line in trainer.curves_path.read_text().splitlines()]
    assert [(r["step"], r["tokens"], r["sae"]) for r in rows] == [
        (s, s * BATCH, n) for s in (5, 10, 12) for n in ("relu", "topk")]
    for name, sae in result.items():  # the last point measures the saved SAE
        assert rows[-2 if name == "relu" else -1]["fvu"] == pytest.approx(
            activation_metrics(sae, heldout)["fvu"], rel=1e-6)
    assert rows[0]["fvu"] != rows[-2]["fvu"]
    with pytest.raises(_Interrupted):
        _curve_run(tmp_path / "resumed", stop_after=11)
    resumed, _, _ = _curve_run(tmp_path / "resumed")
    assert resumed.curves_path.read_text() == trainer.curves_path.read_text()


def _half_budget_run(out, steps, half_budget=False, stop_after=None, checkpoint_every=0):
    """Every architecture on the same batches, λ at full strength from the start (so that
    the half run's λ schedule is the whole run's), measured on held-out activations."""
    batches, evaluate, _ = _interruptible(stop_after)
    cfg = config(ALL_SAES, steps, sparsity_warmup_fraction=0.0, dead_tokens=3 * BATCH,
                 half_budget=half_budget, checkpoint_every=checkpoint_every)
    trainer = Trainer(cfg, out)
    trainer.fit(batches, evaluate)
    return [json.loads(line) for line in trainer.curves_path.read_text().splitlines()]


def test_the_half_budget_twin_ends_as_a_run_of_half_the_steps_and_resumes_the_same(
    tmp_path, monkeypatch
):
    """The twins branch off at step 8 of 20 (where a 10-step run starts its lr decay), decay
    over steps 8 and 9, and are measured at step 10: bitwise the SAEs of a 10-step run."""
    monkeypatch.setattr(trainer_module, "SCALE_SAMPLE_TOKENS", BATCH)  # the same input scale
    whole = _half_budget_run(tmp_path / "whole", 20, half_budget=True)
    half = _half_budget_run(tmp_path / "half", 10)
    names = [s.get("name", s["arch"]) for s in ALL_SAES]
    assert [(r["step"], r["run_tokens"]) for r in whole] == [
        *[(10, 10 * BATCH)] * len(names), *[(20, 20 * BATCH)] * len(names)]
    twins = {r["sae"]: r for r in whole if r["run_tokens"] == 10 * BATCH}
    for r in half:
        assert (twins[r["sae"]]["fvu"], twins[r["sae"]]["l0"]) == (r["fvu"], r["l0"]), r["sae"]
    ends = {r["sae"]: r["fvu"] for r in whole if r["step"] == 20}
    assert all(ends[n] != twins[n]["fvu"] for n in names)
    # interrupted while the twins train (checkpoint at step 9), resumed: the same curves
    with pytest.raises(_Interrupted):
        _half_budget_run(tmp_path / "resumed", 20, True, stop_after=12, checkpoint_every=9)
    assert _half_budget_run(tmp_path / "resumed", 20, True, checkpoint_every=9) == whole


def test_run_json_records_the_training_stream_dead_fraction(tmp_path):
    slots = []

    class RecordingSlot(TrainingSlot):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            slots.append(self)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(trainer_module, "TrainingSlot", RecordingSlot)
        # Strong L1 from the start kills latents: some never fire in the last 3 batches.
        fit(tmp_path / "out", [{"arch": "relu", "d_sae": D_SAE, "sparsity_coef": 50.0,
                                "lr": 0.2}], steps=12, sparsity_warmup_fraction=0.0,
            dead_tokens=3 * BATCH)
    run = json.loads((tmp_path / "out" / "run.json").read_text())
    expected = float((slots[0].tokens_since_fired >= 3 * BATCH).float().mean())
    assert run["dead_fraction"] == {"relu": expected} and 0 < expected < 1
