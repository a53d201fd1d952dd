"""One training step of the peers' SAEs, run the way each peer's own trainer runs it.

`make_peer_step(peer, arch, ...)` builds the peer's SAE and optimiser with the peer's own
classes and defaults and returns `step(x)`, one full training step on a batch `x` of
shape [batch, d_in]; it returns {"l0": mean active latents per token, "loss": the step's
loss}. The peers are imported only when asked for (install them with `make bench`).

Every peer keeps its defaults except these, which make a short run sit at its steady
state: schedules are built for 10^9 steps, lr and sparsity-penalty warmups are 0, and
dictionary_learning's top-k threshold EMA runs from the first step (its default starts it
at step 1000). Dead-latent auxiliary losses only start once a latent has been silent for
the peer's window (SAELens 1000 steps, the others 10^7 tokens), so a short run never pays
for them; each step still does the bookkeeping that decides it.

saelens (sae-lens): its own `SAETrainer` (Adam, lr 3e-4, constant schedule) and the body
    of its `fit()` loop for one batch: `maybe_reset_sparsity()`, `step(x)` (activation
    scaler, `training_forward_pass` with MSE plus the architecture's aux loss, firing
    statistics for dead latents, backward, grad-norm clip 1.0, Adam, lr and coefficient
    schedulers) and the step count. No decoder-norm constraint: SAELens folds ||W_dec||
    into its penalties instead. relu is its "standard" SAE (l1_coefficient =
    sparsity_coef), gated (l1_coefficient), jumprelu ("step" L0 loss, l0_coefficient),
    topk and batchtopk (k, with the top-k aux loss on dead latents).
sparsify (eai-sparsify): `SparseCoder` (topk) with the optimiser its `Trainer` builds by
    default (signum: `ScheduleFreeWrapper(SignSGD, momentum=0.95)`, lr 5e-3/sqrt(d_sae/2^14))
    and the per-batch work of `Trainer.fit()` for the default fvu loss: b_dec = batch mean on
    the first step, unit-norm decoder, forward with the batch's total variance, did-fire
    mask, backward of fvu (+ auxk_alpha·auxk, 0 by default), removal of the gradient
    parallel to the decoder rows, optimiser step, dead-latent counters. Left out: the
    language-model hook plumbing (token mask, activation copies), checkpoints and wandb.
    The decoder is sparsify's Triton kernel where Triton imports, else its eager
    embedding_bag. `SparseCoder.forward` autocasts itself to bf16 on any bf16-capable GPU
    and `fit()` sets float32 matmul precision "high": so with precision "bf16" the step runs
    as sparsify ships it (matmul precision "high" for the step only), and with "float32"
    it calls the undecorated forward at the caller's matmul precision.
dictionary_learning (dictionary-learning): the trainer's own `update(step, x)`, called as
    its `trainSAE` loop does (bf16: the batch cast to bf16 and the update under CUDA bf16
    autocast). relu is `StandardTrainer` (ConstrainedAdam: decoder-gradient projection and
    unit-norm decoder columns, l1_penalty = sparsity_coef), gated `GatedSAETrainer`
    (ConstrainedAdam, betas (0, 0.999), l1_penalty), topk `TopKTrainer` and batchtopk
    `BatchTopKTrainer` (geometric-median b_dec on the first step, auxk on dead latents,
    gradient projection, clip 1.0, Adam, unit-norm decoder, threshold EMA), jumprelu
    `JumpReluTrainer` (L0 loss towards target_l0 = k, sparsity_penalty = sparsity_coef).
    Its package `__init__` imports nnsight (for its activation buffer), and importing
    nnsight monkeypatches torch.autocast, einops and math for the whole process; so the
    trainer modules are loaded without running that `__init__`, and nnsight is not needed.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.metadata
import importlib.util
import sys
from collections.abc import Callable

import torch

PEER_ARCHS: dict[str, tuple[str, ...]] = {
    "saelens": ("relu", "gated", "topk", "jumprelu", "batchtopk"),
    "sparsify": ("topk",),
    "dictionary_learning": ("relu", "gated", "topk", "jumprelu", "batchtopk"),
}
DISTRIBUTIONS = {
    "saelens": "sae-lens",
    "sparsify": "eai-sparsify",
    "dictionary_learning": "dictionary-learning",
}
LONG_RUN = 10**9  # steps the schedules are built for: flat over any benchmark

Step = Callable[[torch.Tensor], dict]


def peer_versions() -> dict[str, str]:
    """Installed version of each peer (peers that are not installed are left out)."""
    versions = {}
    for peer, dist in DISTRIBUTIONS.items():
        try:
            versions[peer] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            pass
    return versions


def make_peer_step(
    peer: str,
    arch: str,
    d_in: int,
    d_sae: int,
    batch: int,
    device: str,
    precision: str,
    k: int,
    sparsity_coef: float,
    lr: float | None = None,
) -> Step:
    """The peer's SAE and optimiser, and `step(x)` running one training step on `x`.

    `lr` None keeps the peer's default learning rate for the architecture.
    """
    if arch not in PEER_ARCHS.get(peer, ()):
        raise ValueError(f"{peer!r} has no {arch!r} SAE; supported: {PEER_ARCHS}")
    if precision not in ("float32", "bf16"):
        raise ValueError(f"precision must be 'float32' or 'bf16', not {precision!r}")
    bf16 = precision == "bf16"
    if bf16 and torch.device(device).type != "cuda":
        raise ValueError("bf16 (autocast over float32 weights) is only run on CUDA")
    build = {
        "saelens": _saelens,
        "sparsify": _sparsify,
        "dictionary_learning": _dictionary_learning,
    }[peer]
    return build(arch, d_in, d_sae, batch, device, bf16, k, sparsity_coef, lr)


def _l0(acts: torch.Tensor) -> float:
    return torch.count_nonzero(acts, dim=-1).float().mean().item()


def _saelens(arch, d_in, d_sae, batch, device, bf16, k, coef, lr) -> Step:
    from sae_lens import saes
    from sae_lens.config import SAETrainerConfig
    from sae_lens.training.sae_trainer import SAETrainer

    shape = dict(d_in=d_in, d_sae=d_sae, device=device, dtype="float32")
    if arch == "relu":
        sae = saes.StandardTrainingSAE(saes.StandardTrainingSAEConfig(**shape, l1_coefficient=coef))
    elif arch == "gated":
        sae = saes.GatedTrainingSAE(saes.GatedTrainingSAEConfig(**shape, l1_coefficient=coef))
    elif arch == "topk":
        sae = saes.TopKTrainingSAE(saes.TopKTrainingSAEConfig(**shape, k=k))
    elif arch == "batchtopk":
        sae = saes.BatchTopKTrainingSAE(saes.BatchTopKTrainingSAEConfig(**shape, k=k))
    else:
        sae = saes.JumpReLUTrainingSAE(saes.JumpReLUTrainingSAEConfig(**shape, l0_coefficient=coef))
    cfg = SAETrainerConfig(
        total_training_samples=LONG_RUN * batch,
        train_batch_size_samples=batch,
        device=device,
        autocast=bf16,
        **({} if lr is None else {"lr": lr}),
    )
    cfg.lr_end = cfg.lr / 10  # what the runner's config fills in
    trainer = SAETrainer(cfg=cfg, sae=sae, data_provider=iter(()))
    trainer.sae.to(device)  # as fit() does

    def step(x: torch.Tensor) -> dict:
        trainer.maybe_reset_sparsity()
        out = trainer.step(x)
        trainer.n_training_steps += 1
        return {"l0": _l0(out.feature_acts), "loss": out.loss.item()}

    return step


def _sparsify(arch, d_in, d_sae, batch, device, bf16, k, coef, lr) -> Step:
    from schedulefree import ScheduleFreeWrapper
    from sparsify import SparseCoder, SparseCoderConfig, TrainConfig
    from sparsify.sign_sgd import SignSGD

    cfg = TrainConfig(SparseCoderConfig(num_latents=d_sae, k=k), lr=lr, log_to_wandb=False)
    sae = SparseCoder(d_in, cfg.sae, device, dtype=torch.float32)
    lr = cfg.lr or 5e-3 / (sae.num_latents / (2**14)) ** 0.5
    opt = ScheduleFreeWrapper(SignSGD([dict(params=sae.parameters(), lr=lr)]), momentum=0.95)
    opt.train()
    forward = sae if bf16 else SparseCoder.forward.__wrapped__.__get__(sae)
    since_fired = torch.zeros(d_sae, device=device, dtype=torch.long)
    did_fire = torch.zeros(d_sae, device=device, dtype=torch.bool)
    steps_done = 0

    def step(x: torch.Tensor) -> dict:
        nonlocal steps_done
        precision = "high" if bf16 else torch.get_float32_matmul_precision()
        with _matmul_precision(precision):
            x = x.to(device)
            if steps_done == 0:
                sae.b_dec.data = x.mean(0).to(sae.dtype)
            sae.set_decoder_norm_to_unit_norm()
            dead_mask = since_fired > cfg.dead_feature_threshold if cfg.auxk_alpha > 0 else None
            total_variance = (x - x.mean(0)).pow(2).sum()
            out = forward(x=x, y=x, dead_mask=dead_mask, total_variance=total_variance)
            did_fire[out.latent_indices.flatten()] = True
            fvu = float(out.fvu.detach())
            loss = out.fvu + cfg.auxk_alpha * out.auxk_loss + out.multi_topk_fvu / 8
            loss.backward()
            sae.remove_gradient_parallel_to_decoder_directions()
            opt.step()
            opt.zero_grad()
            with torch.no_grad():
                since_fired.add_(x.shape[0])
                since_fired[did_fire] = 0
                did_fire.zero_()
            steps_done += 1
        return {"l0": _l0(out.latent_acts), "loss": fvu}

    return step


@contextlib.contextmanager
def _matmul_precision(precision: str):
    before = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision(precision)
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(before)


def _dictionary_learning_trainers():
    """dictionary_learning.trainers, without running the package `__init__` (nnsight)."""
    if "dictionary_learning" not in sys.modules:
        spec = importlib.util.find_spec("dictionary_learning")
        if spec is None:
            raise ModuleNotFoundError("dictionary-learning is not installed (make bench)")
        sys.modules["dictionary_learning"] = importlib.util.module_from_spec(spec)
    return importlib.import_module("dictionary_learning.trainers")


def _dictionary_learning(arch, d_in, d_sae, batch, device, bf16, k, coef, lr) -> Step:
    trainers = _dictionary_learning_trainers()
    common = dict(
        steps=LONG_RUN,
        activation_dim=d_in,
        dict_size=d_sae,
        layer=0,
        lm_name="benchmark",
        device=device,
        warmup_steps=0,
        **({} if lr is None else {"lr": lr}),
    )
    if arch == "relu":
        trainer = trainers.StandardTrainer(**common, l1_penalty=coef, sparsity_warmup_steps=None)
    elif arch == "gated":
        trainer = trainers.GatedSAETrainer(**common, l1_penalty=coef, sparsity_warmup_steps=None)
    elif arch == "topk":
        trainer = trainers.TopKTrainer(**common, k=k, threshold_start_step=0)
    elif arch == "batchtopk":
        trainer = trainers.BatchTopKTrainer(**common, k=k, threshold_start_step=0)
    else:
        trainer = trainers.JumpReluTrainer(
            **common, sparsity_penalty=coef, target_l0=float(k), sparsity_warmup_steps=None
        )

    # update() returns no latents: keep the ones each trainer decodes, and its loss.
    seen = {}
    decode, loss_fn = trainer.ae.decode, trainer.loss

    def keep_latents(f, *args, **kwargs):
        seen["f"] = f.detach()
        return decode(f, *args, **kwargs)

    def keep_loss(*args, **kwargs):
        seen["loss"] = loss = loss_fn(*args, **kwargs)
        return loss

    trainer.ae.decode, trainer.loss = keep_latents, keep_loss
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
    steps_done = 0

    def step(x: torch.Tensor) -> dict:
        nonlocal steps_done
        if bf16:
            x = x.to(dtype=torch.bfloat16)
        with autocast:
            trainer.update(steps_done, x)
        steps_done += 1
        return {"l0": _l0(seen.pop("f")), "loss": seen.pop("loss").item()}

    return step
