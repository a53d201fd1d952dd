"""Train many SAEs on one stream of activation batches: each batch is read once and every SAE
steps on it. The trainer knows nothing of models or text: it takes any iterable of
[batch, d_in] tensors."""

from __future__ import annotations

import copy
import hashlib
import itertools
import json
import math
import platform
import time
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field, fields
from itertools import islice
from pathlib import Path

import torch
from tqdm.auto import tqdm

from .. import __version__
from ..errors import ConfigError, DataError, GatedSAEError, check_positive_int
from ..files import atomic_write_text
from ..saes import ARCHITECTURES, SAE, architecture_options, create_sae
from .checkpoint import load_checkpoint, save_checkpoint
from .schedules import lr_factor, sparsity_factor

SCALE_SAMPLE_TOKENS = 1 << 16  # activations read to estimate the input scale and b_dec
STEPS = ("auto", "dense", "sparse")
PRECISIONS = {"float32": None, "bf16": torch.bfloat16}
# Below this fraction of active (token, latent) pairs a sparse step beats a dense one.
# CPU: measured on a 2-core EPYC (benchmarks/peers.py --crossover; relu, float32, d_in 576,
# batch 4096): sparse/dense time at density 0.1 and 0.2 is 0.76 and 1.19 at d_sae 4608,
# 0.82 and 1.65 at d_sae 18432, so the two cross near 0.16 and 0.12. CUDA: measured on an
# H200 (benchmarks/gpu.sh; bf16, d_in 2304, d_sae 65536, batch 4096) before the sparse step
# got CUDA-sized blocks and gathered dot products. Sparse/dense step time: relu 1.77 at
# density 0.005 (b_enc set), 1.77 at 0.0005 and 0.94 at 0.00013 (trained), topk 0.93 at
# 0.0005; so they crossed between 0.00013 and 0.0005. To be measured again with them
# (gpu.sh reports the crossover).
SPARSE_CROSSOVER = {"cpu": 0.12, "cuda": 0.0003}
# ...and only for products of at least this many multiply-adds (batch·d_in·d_sae): below
# it, the sparse step's few dozen small operations cost more than the matmuls they save.
SPARSE_MIN_WORK = {"cpu": 1 << 28, "cuda": 1 << 32}
DEFAULT_LR = 3e-4  # Rajamanoharan et al. 2024 (relu, gated)
DEFAULT_SPARSITY_COEF = {"relu": 5.0, "gated": 5.0, "jumprelu": 0.5}


def default_lr(arch: str, d_sae: int) -> float:
    """3e-4 as in the Gated SAE paper; TopK follows Gao et al.: `2e-4 / √(d_sae / 2^14)`."""
    if arch in ("topk", "batchtopk"):
        return 2e-4 / math.sqrt(d_sae / 2**14)
    return DEFAULT_LR


@dataclass
class SAEConfig:
    """One SAE of a run: its architecture, width, options and optimisation settings."""

    arch: str = field(metadata={"help": ", ".join(ARCHITECTURES)})
    d_sae: int = field(metadata={"help": "number of latents"})
    lr: float | None = field(default=None, metadata={
        "help": f"learning rate (default: {DEFAULT_LR:g}; topk, batchtopk: 2e-4/√(d_sae/2^14))"})
    sparsity_coef: float | None = field(default=None, metadata={
        "help": "λ of the sparsity penalty; topk and batchtopk take options.k instead "
                f"(default: {', '.join(f'{a} {c:g}' for a, c in DEFAULT_SPARSITY_COEF.items())})"})
    options: dict = field(default_factory=dict)
    name: str | None = None
    resample_every: int = field(default=0, metadata={
        "help": "steps between dead-latent resamplings (relu, gated); 0 = off"})

    def __post_init__(self):
        accepted = architecture_options(self.arch)  # raises on an unknown architecture
        unknown = sorted(set(self.options) - set(accepted))
        if unknown:
            raise ConfigError(
                f"unknown option {unknown[0]!r} for {self.arch}; accepted: {', '.join(accepted)}"
            )
        check_positive_int("d_sae", self.d_sae)
        if self.lr is None:
            self.lr = default_lr(self.arch, self.d_sae)
        if self.sparsity_coef is None:
            self.sparsity_coef = DEFAULT_SPARSITY_COEF.get(self.arch, 0.0)
        _positive("lr", self.lr)
        if self.sparsity_coef < 0 or not math.isfinite(self.sparsity_coef):
            raise ConfigError(
                f"sparsity_coef must be a finite number >= 0, got {self.sparsity_coef}"
            )
        if self.resample_every and self.arch not in ("relu", "gated"):
            raise ConfigError(f"resample_every applies to relu and gated, not {self.arch}")


@dataclass
class TrainConfig:
    """A training run: the SAEs, and what they share (batches, token budget, schedules)."""

    saes: list[SAEConfig]
    batch_size: int = field(default=4096, metadata={"help": "activations per SAE step"})
    tokens: int = field(default=10_000_000, metadata={"help": "training tokens"})
    seed: int = field(default=0, metadata={"help": "seed of initialisation and shuffling"})
    device: str = field(default="cpu", metadata={"help": "cpu, cuda or cuda:N"})
    lr_warmup_steps: int = field(default=100, metadata={"help": "steps of linear lr warmup"})
    lr_decay_fraction: float = field(default=0.2, metadata={
        "help": "final fraction of steps over which the lr decays to 0"})
    sparsity_warmup_fraction: float = field(default=0.05, metadata={
        "help": "first fraction of steps over which λ ramps up from 0"})
    dead_tokens: int | None = field(default=None, metadata={
        "help": "a latent is dead after this many tokens without firing "
                "(default: tokens // 10, at least batch_size, at most 10M)"})
    step: str = field(default="auto", metadata={
        "help": "dense, sparse, or auto: whichever is cheaper at the current density"})
    precision: str = field(default="float32", metadata={
        "help": "float32, or bf16: bfloat16 autocast over float32 master weights"})
    checkpoint_every: int = field(default=500, metadata={
        "help": "steps between checkpoints; 0 = only at the end"})
    log_every: int = field(default=10, metadata={"help": "steps between logged metrics"})
    wandb_project: str | None = field(default=None, metadata={"help": "wandb project to log to"})

    def __post_init__(self):
        self.saes = [s if isinstance(s, SAEConfig) else SAEConfig(**s) for s in self.saes]
        if not self.saes:
            raise ConfigError("a run needs at least one SAE")
        for name in ("batch_size", "tokens", "log_every"):
            check_positive_int(name, getattr(self, name))
        if self.tokens < self.batch_size:
            raise ConfigError(
                f"tokens ({self.tokens}) must be at least batch_size ({self.batch_size})"
            )
        if self.step not in STEPS:
            raise ConfigError(f"step must be one of {', '.join(STEPS)}, got {self.step!r}")
        if self.precision not in PRECISIONS:
            raise ConfigError(
                f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}"
            )
        if self.checkpoint_every < 0:
            raise ConfigError(f"checkpoint_every must be >= 0, got {self.checkpoint_every}")
        if not 0 <= self.lr_decay_fraction <= 1 or not 0 <= self.sparsity_warmup_fraction <= 1:
            raise ConfigError("lr_decay_fraction and sparsity_warmup_fraction must be in [0, 1]")
        if self.dead_tokens is None:
            self.dead_tokens = min(10_000_000, max(self.tokens // 10, self.batch_size))
        check_positive_int("dead_tokens", self.dead_tokens)
        unnamed = [s for s in self.saes if s.name is None]
        for s in unnamed:
            same_arch = [c for c in unnamed if c.arch == s.arch]
            index = next(i for i, c in enumerate(same_arch) if c is s)
            s.name = s.arch if len(same_arch) == 1 else f"{s.arch}-{index}"
        names = [s.name for s in self.saes]
        if len(set(names)) != len(names):
            raise ConfigError(f"SAE names must be unique within a run, got {names}")

    @property
    def steps(self) -> int:
        return self.tokens // self.batch_size

    @classmethod
    def from_dict(cls, raw: dict) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise ConfigError(
                f"unknown run setting {unknown[0]!r}; accepted: {', '.join(sorted(known))}"
            )
        saes = raw.get("saes")
        if not isinstance(saes, list):
            raise ConfigError(
                "the config needs a list 'saes' of SAEs, each with at least arch and d_sae"
            )
        sae_fields = {f.name for f in fields(SAEConfig)}
        for s in saes:
            bad = sorted(set(s) - sae_fields) if isinstance(s, dict) else ["(not a mapping)"]
            if bad:
                raise ConfigError(
                    f"unknown SAE setting {bad[0]!r}; accepted: {', '.join(sorted(sae_fields))}"
                )
        try:
            return cls(**{**raw, "saes": [SAEConfig(**s) for s in saes]})
        except TypeError as e:
            raise ConfigError(f"incomplete config: {e}") from None


def _positive(name: str, value) -> None:
    if not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ConfigError(f"{name} must be a positive number, got {value!r}")


def init_seed(seed: int, cfg: SAEConfig, d_in: int) -> int:
    """The seed of an SAE's initial weights: a function of the run seed and the SAE's shape
    alone, so an SAE starts the same whichever SAEs share its run, and SAEs that differ
    only in lr or sparsity coefficient start from the same weights."""
    key = json.dumps([seed, cfg.arch, d_in, cfg.d_sae, cfg.options], sort_keys=True)
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:7], "little")


class TrainingSlot:
    """One SAE under training with its optimiser, dead-latent counter and step density."""

    def __init__(
        self, cfg: SAEConfig, d_in: int, device: str, seed: int, precision: str = "float32"
    ):
        self.cfg = cfg
        self.device_type = torch.device(device).type
        self.matmul_dtype = PRECISIONS[precision]
        torch.manual_seed(init_seed(seed, cfg, d_in))
        self.sae: SAE = create_sae(cfg.arch, d_in=d_in, d_sae=cfg.d_sae, **cfg.options).to(device)
        self.optimizer = torch.optim.Adam(
            self.sae.parameters(), lr=cfg.lr, betas=self.sae.adam_betas, eps=1e-8, fused=True
        )
        self.tokens_since_fired = torch.zeros(cfg.d_sae, dtype=torch.long, device=device)
        # Fraction of (token, latent) pairs the last step's sparse form touched: 1 before any.
        self.density = 1.0

    def state(self) -> dict:
        return {
            "sae": self.sae.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "tokens_since_fired": self.tokens_since_fired,
            "density": self.density,
        }

    def load_state(self, state: dict) -> None:
        self.sae.load_state_dict(state["sae"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.tokens_since_fired.copy_(state["tokens_since_fired"])
        self.density = state["density"]

    def choose_step(self, step: str, batch_size: int) -> str:
        """`dense` or `sparse`: as forced, or (auto) whichever is cheaper at the density of
        the previous batch, a function of the training state alone, so resuming repeats it."""
        if step != "auto":
            return step
        work = batch_size * self.sae.d_in * self.sae.d_sae
        sparse_pays = work >= SPARSE_MIN_WORK[self.device_type]
        sparse_pays &= self.density < SPARSE_CROSSOVER[self.device_type]
        return "sparse" if sparse_pays else "dense"

    def step(
        self,
        x: torch.Tensor,
        lr_scale: float,
        coef_scale: float,
        dead_tokens: int,
        path: str = "dense",
    ) -> dict:
        """One optimiser step on a batch of scaled activations, on the `dense` or `sparse`
        path (the same mathematics); returns detached terms."""
        sae, opt = self.sae, self.optimizer
        for group in opt.param_groups:
            group["lr"] = self.cfg.lr * lr_scale
        dead_mask = self.tokens_since_fired >= dead_tokens
        coef = self.cfg.sparsity_coef * coef_scale
        opt.zero_grad(set_to_none=True)
        if path == "sparse":
            out = sae.sparse_gradients(x, coef, dead_mask, self.matmul_dtype)
        else:
            precision = self.matmul_dtype or torch.float32
            autocast = self.matmul_dtype is not None
            with torch.autocast(self.device_type, dtype=precision, enabled=autocast):
                out = sae.training_loss(x, coef, dead_mask)
            out.loss.backward()
        if sae.unit_norm_decoder:
            sae.remove_parallel_decoder_grad_()
        opt.step()
        sae.after_step_()
        self.tokens_since_fired += x.shape[0]
        self.tokens_since_fired[out.fired] = 0
        self.density = out.active_pairs / (x.shape[0] * sae.d_sae)
        return {"loss": out.loss.detach(), **out.terms, "l0": out.l0}

    @torch.no_grad()
    def resample_dead(self, x: torch.Tensor, window_tokens: int, generator: torch.Generator) -> int:
        """Bricken et al. 2023: latents silent for the whole window get a high-loss input as their
        decoder row, the same direction × 0.2 × mean alive encoder norm as their encoder column,
        zero biases, and fresh Adam state."""
        dead = torch.nonzero(self.tokens_since_fired >= window_tokens).flatten()
        if dead.numel() == 0:
            return 0
        sae = self.sae
        per_input_loss = (x - sae(x)).pow(2).sum(-1)
        weights = per_input_loss.pow(2).cpu()
        if float(weights.sum()) <= 0:
            return 0
        picks = torch.multinomial(weights, dead.numel(), replacement=True, generator=generator)
        directions = x[picks.to(x.device)] - sae.b_dec
        directions /= directions.norm(dim=1, keepdim=True).clamp_min(1e-8)
        alive = torch.ones(sae.d_sae, dtype=torch.bool, device=x.device)
        alive[dead] = False
        enc_norm = sae.W_enc[:, alive].norm(dim=0).mean() if bool(alive.any()) else 1.0
        sae.W_dec[dead] = directions
        for name in sae.input_weights:
            getattr(sae, name)[:, dead] = directions.T * (0.2 * enc_norm)
        for name, p in sae.named_parameters():
            if name == "b_dec":
                continue
            if p.ndim == 1:  # per-latent biases (and r_mag)
                p[dead] = 0.0
            latent_dim = 1 if name in sae.input_weights else 0  # W_enc is [d_in, d_sae]
            for moment in ("exp_avg", "exp_avg_sq"):
                if moment in self.optimizer.state.get(p, {}):
                    self.optimizer.state[p][moment].index_fill_(latent_dim, dead, 0.0)
        self.tokens_since_fired[dead] = 0
        return int(dead.numel())


def estimate_input_scale(sample: torch.Tensor) -> float:
    """The scalar `s` with `E‖s·x‖² = d_in` on a sample (sae-math.md, "Input scaling")."""
    mean_sq_norm = sample.double().pow(2).sum(-1).mean()
    if not mean_sq_norm > 0:
        raise DataError("activations are all zero; cannot estimate the input scale")
    return math.sqrt(sample.shape[1] / float(mean_sq_norm))


class Trainer:
    """Trains the SAEs of a `TrainConfig` on one stream of batches, checkpointing into `out`.

    Running again with the same `out` and config resumes from the last checkpoint, and ends
    with the same weights an uninterrupted run would have (bitwise on CPU).
    """

    def __init__(self, config: TrainConfig, out: str | Path, metadata: dict | None = None):
        self.config, self.out = config, Path(out)
        self.metadata = metadata or {}
        self.checkpoint_path = self.out / "checkpoint.pt"
        self.log_path = self.out / "metrics.jsonl"

    def sae_dir(self, name: str) -> Path:
        return self.out / name

    def fit(self, batches: Iterable[torch.Tensor]) -> dict[str, SAE]:
        """Train to the token budget; write each SAE (input scale folded in) to `out/<name>`."""
        cfg = self.config
        run_file = self.out / "run.json"
        if run_file.is_file():
            run = json.loads(run_file.read_text())
            if run.get("config") != asdict(cfg):
                raise ConfigError(
                    f"{self.out} holds a run with a different config; pass a new --out "
                    "or the same settings to resume it"
                )
            if run.get("finished"):
                from ..saes import load_sae

                return {s.name: load_sae(self.sae_dir(s.name)) for s in cfg.saes}
        resume = load_checkpoint(self.checkpoint_path) if self.checkpoint_path.is_file() else None
        start = resume["step"] if resume else 0
        stream = (
            batches.iter_from(start)
            if hasattr(batches, "iter_from")
            else islice(iter(batches), start, None)
        )
        stream = iter(stream)
        first = self._next_batch(stream, start)
        d_in = first.shape[1]

        slots = [TrainingSlot(s, d_in, cfg.device, cfg.seed, cfg.precision) for s in cfg.saes]
        generator = torch.Generator().manual_seed(cfg.seed)
        if resume:
            scale = resume["input_scale"]
            for slot, state in zip(slots, resume["slots"], strict=True):
                slot.load_state(state)
            generator.set_state(resume["generator"])
            self._truncate_log(start)
        else:
            # One batch is too small a sample: a single outlier token (residual streams have
            # some with 40× the median norm) shifts the scale by tens of percent, and with it
            # the effective sparsity coefficient, differently for every seed.
            sample = [first]
            while len(sample) * cfg.batch_size < SCALE_SAMPLE_TOKENS and len(sample) < cfg.steps:
                sample.append(self._next_batch(stream, start + len(sample)))
            stream = itertools.chain(sample[1:], stream)  # the sample is trained on as well
            sample = torch.cat(sample)
            scale = estimate_input_scale(sample)
            sample = sample.to(cfg.device, torch.float32) * scale
            for slot in slots:
                slot.sae.init_from_data(sample)
            self.out.mkdir(parents=True, exist_ok=True)
            self.log_path.unlink(missing_ok=True)
        atomic_write_text(run_file, json.dumps(self._run_record(d_in, scale, False), indent=2))

        logger = _Logger(self.log_path, cfg.wandb_project, asdict(cfg))
        bar = tqdm(total=cfg.steps, initial=start, desc="train", unit="step", dynamic_ncols=True)
        batch = first
        # Time in SAE steps alone, against the loop's wall time: what reading, moving and
        # shuffling batches and logging cost on top (benchmarks/sweep_amortization.py).
        step_seconds = {slot.cfg.name: 0.0 for slot in slots}
        paths = {s.cfg.name: {p: {"steps": 0, "seconds": 0.0} for p in STEPS[1:]} for s in slots}
        cuda = torch.device(cfg.device).type == "cuda"
        loop_started = time.perf_counter()
        for step in range(start, cfg.steps):
            if step > start:
                batch = self._next_batch(stream, step)
            if batch.shape[1] != d_in:
                raise DataError(f"batch {step} has d_in {batch.shape[1]}, earlier batches {d_in}")
            x = batch.to(cfg.device, torch.float32, non_blocking=True) * scale
            lr_scale = lr_factor(step, cfg.steps, cfg.lr_warmup_steps, cfg.lr_decay_fraction)
            coef_scale = sparsity_factor(step, cfg.steps, cfg.sparsity_warmup_fraction)
            records = []
            for slot in slots:
                path = slot.choose_step(cfg.step, cfg.batch_size)
                if cuda:
                    torch.cuda.synchronize()
                started = time.perf_counter()
                terms = slot.step(x, lr_scale, coef_scale, cfg.dead_tokens, path)
                if cuda:
                    torch.cuda.synchronize()
                seconds = time.perf_counter() - started
                step_seconds[slot.cfg.name] += seconds
                paths[slot.cfg.name][path]["steps"] += 1
                paths[slot.cfg.name][path]["seconds"] += seconds
                every = slot.cfg.resample_every
                if every and (step + 1) % every == 0:
                    terms["resampled"] = slot.resample_dead(x, every * cfg.batch_size, generator)
                records.append((slot, terms))
            if (step + 1) % cfg.log_every == 0 or step + 1 == cfg.steps:
                logger.log(
                    step + 1,
                    (step + 1) * cfg.batch_size,
                    lr_scale,
                    coef_scale,
                    records,
                    cfg.dead_tokens,
                )
                bar.set_postfix_str(
                    " ".join(f"{s.cfg.name}:L0={float(t['l0']):.1f}" for s, t in records[:3])
                )
            bar.update(1)
            done = step + 1
            if cfg.checkpoint_every and done % cfg.checkpoint_every == 0 and done < cfg.steps:
                self._save_checkpoint(done, scale, slots, generator)
        timing = {
            "steps": cfg.steps - start,
            "wall_seconds": time.perf_counter() - loop_started,
            "step_seconds": step_seconds,
            "paths": paths,
        }
        bar.close()
        logger.close()
        result = {}
        for slot in slots:
            sae = copy.deepcopy(slot.sae).cpu()
            sae.fold_input_scale_(scale)
            sae.save(
                self.sae_dir(slot.cfg.name),
                metadata={**self.metadata, "training": asdict(slot.cfg)},
            )
            result[slot.cfg.name] = sae
        record = {**self._run_record(d_in, scale, True), "timing": timing}
        atomic_write_text(run_file, json.dumps(record, indent=2))
        self.checkpoint_path.unlink(missing_ok=True)
        return result

    def _next_batch(self, stream: Iterator[torch.Tensor], step: int) -> torch.Tensor:
        try:
            batch = next(stream)
        except StopIteration:
            raise DataError(
                f"the activations ran out after {step} batches; the run needs "
                f"{self.config.steps} batches of {self.config.batch_size}"
            ) from None
        if batch.ndim != 2 or batch.shape[0] != self.config.batch_size:
            raise DataError(
                f"batch {step} has shape {list(batch.shape)}; "
                f"expected [{self.config.batch_size}, d_in]"
            )
        if not bool(torch.isfinite(batch).all()):
            raise DataError(f"batch {step} contains NaN or Inf; activations must be finite")
        return batch

    def _save_checkpoint(self, step: int, scale: float, slots, generator) -> None:
        save_checkpoint(
            self.checkpoint_path,
            {
                "step": step,
                "input_scale": scale,
                "slots": [slot.state() for slot in slots],
                "generator": generator.get_state(),
            },
        )

    def _truncate_log(self, step: int) -> None:
        """Drop log lines written after the checkpoint we resume from."""
        if not self.log_path.is_file():
            return
        keep = [
            line
            for line in self.log_path.read_text().splitlines()
            if line and json.loads(line)["step"] <= step
        ]
        atomic_write_text(self.log_path, "".join(line + "\n" for line in keep))

    def _run_record(self, d_in: int, scale: float, finished: bool) -> dict:
        return {
            "config": asdict(self.config),
            "d_in": d_in,
            "input_scale": scale,
            "finished": finished,
            "metadata": self.metadata,
            "versions": {
                "gated_sae": __version__,
                "torch": torch.__version__,
                "python": platform.python_version(),
            },
            "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }


class _Logger:
    """Per-step metrics as JSON lines (one per SAE), and to wandb when asked."""

    def __init__(self, path: Path, wandb_project: str | None, config: dict):
        self.file = path.open("a")
        self.wandb = None
        if wandb_project:
            try:
                import wandb
            except ImportError:
                raise ConfigError(
                    "wandb_project is set but wandb is not installed (pip install wandb)"
                ) from None
            self.wandb = wandb.init(project=wandb_project, config=config)

    def log(self, step, tokens, lr_scale, coef_scale, records, dead_tokens) -> None:
        for slot, terms in records:
            row = {
                "step": step,
                "tokens": tokens,
                "sae": slot.cfg.name,
                "lr": slot.cfg.lr * lr_scale,
                "sparsity_coef": slot.cfg.sparsity_coef * coef_scale,
            }
            row.update({k: float(v) for k, v in terms.items()})
            row["dead_fraction"] = float((slot.tokens_since_fired >= dead_tokens).float().mean())
            if not math.isfinite(row["loss"]):
                raise GatedSAEError(
                    f"SAE {slot.cfg.name} diverged (loss {row['loss']}) at step {step}; "
                    "lower its lr"
                )
            self.file.write(json.dumps(row) + "\n")
            if self.wandb is not None:
                self.wandb.log(
                    {f"{slot.cfg.name}/{k}": v for k, v in row.items() if k != "sae"}, step=step
                )
        self.file.flush()

    def close(self) -> None:
        self.file.close()
        if self.wandb is not None:
            self.wandb.finish()
