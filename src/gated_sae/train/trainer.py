"""Train many SAEs on one stream of activation batches: each batch is read once and every SAE
steps on it. The trainer knows nothing of models or text: it takes any iterable of
[batch, d_in] tensors."""

from __future__ import annotations

import copy
import itertools
import json
import math
import platform
import time
import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field, fields
from itertools import islice
from pathlib import Path

import torch
from tqdm.auto import tqdm

from .. import __version__
from ..data.batches import BatchStream
from ..distributed import SINGLE_PROCESS, World
from ..errors import ConfigError, DataError, GatedSAEError, check_positive_int
from ..files import append_whole, atomic_write_text
from ..saes import ARCHITECTURES, SAE, sae_class
from .checkpoint import load_checkpoint, save_checkpoint
from .schedules import lr_factor, sparsity_factor
from .slot import PRECISIONS, STEPS, TrainingSlot

# Measures SAEs (by name, input scale folded in) for training curves: metrics by name.
Evaluation = Callable[[dict[str, SAE]], dict[str, dict[str, float]]]
SCALE_SAMPLE_TOKENS = 1 << 16  # activations read to estimate the input scale and b_dec
# Adam moves a weight by about lr per step, so a run of S steps moves it by at most about
# lr·S; SAEs that train in S steps need lr·S of about this (docs/training.md).
SHORT_RUN_LR_STEPS = 8.0
PARALLEL = ("saes", "data", "latents")  # how the ranks of a job share its SAEs


@dataclass
class SAEConfig:
    """One SAE of a run: its architecture, width, options and optimisation settings."""

    arch: str = field(metadata={"help": ", ".join(ARCHITECTURES)})
    d_sae: int = field(metadata={"help": "number of latents"})
    lr: float | None = field(default=None, metadata={
        "help": "learning rate (default: the architecture's published one, 3e-4 or for topk "
                "and batchtopk 2e-4/√(d_sae/2^14), raised to 8/steps for shorter runs, at "
                "most 1e-2, for topk and batchtopk 5e-3)"})
    sparsity_coef: float | None = field(default=None, metadata={
        "help": "λ of the sparsity penalty; topk and batchtopk take options.k instead "
                "(default: " + ", ".join(f"{name} {cls.default_sparsity_coef:g}"
                                         for name, cls in ARCHITECTURES.items()
                                         if cls.default_sparsity_coef) + ")"})
    options: dict = field(default_factory=dict)
    name: str | None = None
    resample_every: int = field(default=0, metadata={
        "help": "steps between dead-latent resamplings (relu, gated); 0 = off"})

    def __post_init__(self):
        architecture = sae_class(self.arch)  # raises on an unknown architecture
        accepted = architecture.default_options()
        unknown = sorted(set(self.options) - set(accepted))
        if unknown:
            raise ConfigError(
                f"unknown option {unknown[0]!r} for {self.arch}; accepted: {', '.join(accepted)}"
            )
        check_positive_int("d_sae", self.d_sae)
        if self.sparsity_coef is None:
            self.sparsity_coef = architecture.default_sparsity_coef
        if self.lr is not None:  # None: set by the run, from its number of steps
            _positive("lr", self.lr)
        if self.sparsity_coef < 0 or not math.isfinite(self.sparsity_coef):
            raise ConfigError(
                f"sparsity_coef must be a finite number >= 0, got {self.sparsity_coef}"
            )
        if self.resample_every and not architecture.resamples_dead_latents:
            resampling = [a for a, c in ARCHITECTURES.items() if c.resamples_dead_latents]
            raise ConfigError(
                f"resample_every applies to {' and '.join(resampling)}, not {self.arch}"
            )


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
    eval_every: int = field(default=0, metadata={
        "help": "steps between evaluations for training curves, when fit() is given an "
                "evaluation; 0 = only at the end"})
    half_budget: bool = field(default=False, metadata={
        "help": "also measure each SAE as a run of half the steps would end (branched off "
                "before that run's lr decay, decayed, evaluated, dropped): what doubling the "
                "tokens bought; needs an evaluation"})
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
        for name in ("checkpoint_every", "eval_every"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be >= 0, got {getattr(self, name)}")
        if not 0 <= self.lr_decay_fraction <= 1 or not 0 <= self.sparsity_warmup_fraction <= 1:
            raise ConfigError("lr_decay_fraction and sparsity_warmup_fraction must be in [0, 1]")
        if self.dead_tokens is None:
            self.dead_tokens = min(10_000_000, max(self.tokens // 10, self.batch_size))
        check_positive_int("dead_tokens", self.dead_tokens)
        for s in self.saes:
            if s.lr is None:
                s.lr = default_lr(s.arch, s.d_sae, self.steps)
        needed = [short_run_lr(s.arch, self.steps) for s in self.saes]
        slow = [f"{s.name or s.arch} lr ≥ {lr:.1e}"
                for s, lr in zip(self.saes, needed, strict=True) if s.lr < lr / 2]
        if slow:
            warnings.warn(
                f"lr too low to train in {self.steps} steps; runs this short need "
                f"{', '.join(slow)} (docs/training.md)", stacklevel=2
            )
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

    @property
    def half_steps(self) -> int:
        return self.steps // 2

    @property
    def branch_step(self) -> int:
        """Where a run of `half_steps` steps starts its lr decay: until then it is this run
        (the lr is flat in both, and λ's warm-up is over in both; it ramped over
        `sparsity_warmup_fraction` of this run's steps, not of the half run's)."""
        return self.half_steps - int(self.lr_decay_fraction * self.half_steps)

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


def default_lr(arch: str, d_sae: int, steps: int) -> float:
    """The architecture's published learning rate, meant for runs of 100k+ steps, raised to
    `short_run_lr` for shorter ones (docs/training.md has the evidence)."""
    return max(sae_class(arch).default_lr(d_sae), short_run_lr(arch, steps))


def short_run_lr(arch: str, steps: int) -> float:
    """The learning rate a run of `steps` steps needs: SHORT_RUN_LR_STEPS / steps, at most
    the architecture's `max_short_run_lr`."""
    return min(SHORT_RUN_LR_STEPS / steps, sae_class(arch).max_short_run_lr)


def _positive(name: str, value) -> None:
    if not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ConfigError(f"{name} must be a positive number, got {value!r}")


def estimate_input_scale(sample: torch.Tensor) -> float:
    """The scalar `s` with `E‖s·x‖² = d_in` on a sample (docs/formulas.md, "Shared pieces")."""
    mean_sq_norm = sample.double().pow(2).sum(-1).mean()
    if not mean_sq_norm > 0:
        raise DataError("activations are all zero; cannot estimate the input scale")
    return math.sqrt(sample.shape[1] / float(mean_sq_norm))


class Trainer:
    """Trains the SAEs of a `TrainConfig` on one stream of batches, checkpointing into `out`.

    Running again with the same `out` and config resumes from the last checkpoint, and ends
    with the same weights an uninterrupted run would have (bitwise on CPU).

    In a `world` of several ranks (torchrun) every rank reads the same batches, and `parallel`
    says how they share the work:
    - `saes`: the SAEs are spread over the ranks, balanced by width and architecture
      (`SAE.relative_step_cost`), each rank stepping its own;
    - `data`: every rank steps every SAE on its own rows of each batch, and the ranks sum
      their gradients (`TrainingSlot`);
    - `latents`: every rank holds a slice of every SAE's latents and steps it on the whole
      batch (`TrainingSlot`, `SAE.latent_ranks`).
    Data and latent parallel give the SAEs of a single process, up to round-off. The folder
    is the one a single process writes: rank 0 writes the logs, curves, run record and
    checkpoint, and the SAE folders of its own SAEs (all of them in data and latent
    parallel, gathered whole in the latter), each other rank its own SAEs' folders.
    """

    def __init__(self, config: TrainConfig, out: str | Path, metadata: dict | None = None,
                 world: World = SINGLE_PROCESS, parallel: str = "saes"):
        if parallel not in PARALLEL:
            raise ConfigError(f"parallel must be one of {', '.join(PARALLEL)}, got {parallel!r}")
        self.config, self.out = config, Path(out)
        self.metadata = metadata or {}
        self.world = world
        self.parallel = parallel
        # every rank holds every SAE, whole or in part, and rank 0 alone records them
        self.replicated = parallel != "saes" and world.size > 1
        self.checkpoint_path = self.out / "checkpoint.pt"
        self.log_path = self.out / "metrics.jsonl"
        self.curves_path = self.out / "curves.jsonl"

    def sae_dir(self, name: str) -> Path:
        return self.out / name

    def fit(
        self, batches: Iterable[torch.Tensor], evaluate: Evaluation | None = None
    ) -> dict[str, SAE]:
        """Train to the token budget; write each SAE (input scale folded in) to `out/<name>`
        and return this rank's SAEs (all of them in a single process).

        With `evaluate`, every `eval_every` steps and at the end the SAEs (copies, input scale
        folded in) are measured by it, and its metrics appended to `out/curves.jsonl`: one
        line per SAE with `step`, `tokens`, `run_tokens` (the budget of the run the point
        belongs to), `sae` and the metrics. With `half_budget`, each SAE's twin (`_twin`)
        adds a line at `half_steps` with half the run's tokens as `run_tokens`.
        """
        cfg, world = self.config, self.world
        run_file = self.out / "run.json"
        if self.replicated:
            owned = list(range(len(cfg.saes)))
        else:
            owned = world.share([s.d_sae * sae_class(s.arch).relative_step_cost
                                 for s in cfg.saes])
            if world.is_main and world.size > len(cfg.saes):
                warnings.warn(f"{world.size} ranks share {len(cfg.saes)} SAEs: the ranks "
                              "without one only read batches", stacklevel=2)
        if run_file.is_file():
            run = json.loads(run_file.read_text())
            if run.get("config") != asdict(cfg):
                raise ConfigError(
                    f"{self.out} holds a run with a different config; pass a new --out "
                    "or the same settings to resume it"
                )
            if run.get("finished"):
                from ..saes import load_sae

                return {cfg.saes[i].name: load_sae(self.sae_dir(cfg.saes[i].name))
                        for i in owned}
        resume = load_checkpoint(self.checkpoint_path) if self.checkpoint_path.is_file() else None
        world.barrier()  # every rank has read the folder before rank 0 rewrites it
        start = resume["step"] if resume else 0
        stream = (
            batches.iter_from(start)
            if isinstance(batches, BatchStream)
            else islice(iter(batches), start, None)
        )
        stream = iter(stream)
        first = self._next_batch(stream, start)
        d_in = first.shape[1]

        ranks = {"batch_ranks": world} if self.parallel == "data" else {}
        if self.parallel == "latents":
            ranks = {"latent_ranks": world}
        slots = [TrainingSlot(cfg.saes[i], d_in, cfg.device, cfg.seed, cfg.precision, **ranks)
                 for i in owned]
        twins: list[TrainingSlot] = []
        half_budget = cfg.half_budget and evaluate is not None and cfg.half_steps > 0
        if resume:
            scale = resume["input_scale"]
            for slot, i in zip(slots, owned, strict=True):
                slot.load_state(resume["slots"][i])
            if resume.get("twins"):
                twins = [self._twin(slot, resume["twins"][i])
                         for slot, i in zip(slots, owned, strict=True)]
            if world.is_main:
                for path in (self.log_path, self.curves_path):
                    _truncate_lines(path, start)
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
            if world.is_main:
                self.out.mkdir(parents=True, exist_ok=True)
                self.log_path.unlink(missing_ok=True)
                self.curves_path.unlink(missing_ok=True)
        if world.is_main:
            run = self._run_record(d_in, scale, False)
            atomic_write_text(run_file, json.dumps(run, indent=2))

        logger = _Logger(self.log_path, cfg.wandb_project if world.is_main else None, asdict(cfg))
        bar = tqdm(total=cfg.steps, initial=start, desc="train", unit="step", dynamic_ncols=True,
                   disable=not world.is_main)
        batch = first
        # Time in SAE steps alone, against the loop's wall time: what reading, moving and
        # shuffling batches and logging cost on top (benchmarks/sweep_amortization.py).
        step_seconds = {slot.cfg.name: 0.0 for slot in slots}
        paths = {s.cfg.name: {p: {"steps": 0, "seconds": 0.0} for p in STEPS[1:]} for s in slots}
        cuda = torch.device(cfg.device).type == "cuda"
        loop_started = time.perf_counter()
        # Closed before an error propagates, so that the error is not printed onto the bar.
        with bar:
            for step in range(start, cfg.steps):
                if step > start:
                    batch = self._next_batch(stream, step)
                if batch.shape[1] != d_in:
                    raise DataError(
                        f"batch {step} has d_in {batch.shape[1]}, earlier batches {d_in}"
                    )
                x = batch.to(cfg.device, torch.float32, non_blocking=True) * scale
                lr_scale = lr_factor(step, cfg.steps, cfg.lr_warmup_steps, cfg.lr_decay_fraction)
                coef_scale = sparsity_factor(step, cfg.steps, cfg.sparsity_warmup_fraction)
                if half_budget and step == cfg.branch_step < cfg.half_steps:
                    twins = [self._twin(slot, slot.state()) for slot in slots]
                half_lr_scale = lr_factor(step, cfg.half_steps, cfg.lr_warmup_steps,
                                          cfg.lr_decay_fraction)
                records = []
                for slot in slots + twins:
                    path = slot.choose_step(cfg.step, cfg.batch_size)
                    if cuda:
                        torch.cuda.synchronize()
                    started = time.perf_counter()
                    twin = slot not in slots
                    out = slot.step(x, half_lr_scale if twin else lr_scale, coef_scale,
                                    cfg.dead_tokens, path)
                    if cuda:
                        torch.cuda.synchronize()
                    seconds = time.perf_counter() - started
                    step_seconds[slot.cfg.name] += seconds
                    paths[slot.cfg.name][path]["steps"] += 1
                    paths[slot.cfg.name][path]["seconds"] += seconds
                    every, resampled = slot.cfg.resample_every, None
                    if every and (step + 1) % every == 0:
                        resampled = slot.resample_dead(x, every * cfg.batch_size)
                    if not twin:
                        records.append((slot, out, resampled))
                if (step + 1) % cfg.log_every == 0 or step + 1 == cfg.steps:
                    rows = _log_rows(step + 1, (step + 1) * cfg.batch_size, lr_scale, coef_scale,
                                     records, cfg.dead_tokens)
                    if not self.replicated:
                        rows = self._in_config_order(world.all_gather(rows))
                    _check_finite(rows)
                    if world.is_main:
                        logger.log(rows)
                    bar.set_postfix_str(
                        " ".join(f"{r['sae']}:L0={r['l0']:.1f}" for r in rows[:3])
                    )
                bar.update(1)
                done = step + 1
                if evaluate is not None and (
                    done == cfg.steps or (cfg.eval_every and done % cfg.eval_every == 0)
                ):
                    self._evaluate(evaluate, done, scale, slots, cfg.steps)
                if half_budget and done == cfg.half_steps:
                    # the SAEs themselves are the half run when it has no lr decay
                    half_run = twins if cfg.branch_step < cfg.half_steps else slots
                    self._evaluate(evaluate, done, scale, half_run, cfg.half_steps)
                    twins = []
                if cfg.checkpoint_every and done % cfg.checkpoint_every == 0 and done < cfg.steps:
                    self._save_checkpoint(done, scale, slots, twins)
        dead = {s.cfg.name: s.dead_fraction(cfg.dead_tokens) for s in slots}
        logger.close()
        result = {}
        for slot in slots:
            sae = _folded_copy(slot, scale).cpu()
            if world.is_main or not self.replicated:
                sae.save(
                    self.sae_dir(slot.cfg.name),
                    metadata={**self.metadata, "training": asdict(slot.cfg)},
                )
            result[slot.cfg.name] = sae
        wall_seconds = time.perf_counter() - loop_started
        ranks = self._gather((dead, step_seconds, paths))  # after every rank saved its SAEs
        if world.is_main:
            timing = {
                "steps": cfg.steps - start,
                "ranks": world.size,
                "parallel": self.parallel if world.size > 1 else "saes",
                "wall_seconds": wall_seconds,
                "step_seconds": self._merged(r[1] for r in ranks),
                "paths": self._merged(r[2] for r in ranks),
            }
            dead = self._merged(r[0] for r in ranks)
            record = {**self._run_record(d_in, scale, True), "timing": timing,
                      "dead_fraction": dead}
            atomic_write_text(run_file, json.dumps(record, indent=2))
            self.checkpoint_path.unlink(missing_ok=True)
        world.barrier()  # the run is finished on disk before any rank goes on
        return result

    def _gather(self, obj) -> list | None:
        """Every rank's `obj` on rank 0 (None elsewhere); in data and latent parallel, where
        every rank holds the same, rank 0's alone."""
        if self.replicated:
            return [obj] if self.world.is_main else None
        return self.world.gather(obj)

    def _merged(self, per_rank: Iterable[dict]) -> dict:
        """The ranks' dicts by SAE name as one, in the config's order."""
        merged = {k: v for d in per_rank for k, v in d.items()}
        return {s.name: merged[s.name] for s in self.config.saes}

    def _in_config_order(self, per_rank: list[list[dict]]) -> list[dict]:
        order = {s.name: i for i, s in enumerate(self.config.saes)}
        return sorted((r for rows in per_rank for r in rows), key=lambda r: order[r["sae"]])

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

    def _save_checkpoint(self, step: int, scale: float, slots, twins) -> None:
        """One checkpoint of every SAE (and twin, while they train), written by rank 0 in the
        config's order, so that a run resumes on any number of ranks."""
        states = self._gather(({s.cfg.name: _to_cpu(s.state()) for s in slots},
                               {s.cfg.name: _to_cpu(s.state()) for s in twins}))
        if self.world.is_main:
            saes = self._merged(r[0] for r in states)
            twin_states = self._merged(r[1] for r in states) if twins else {}
            save_checkpoint(
                self.checkpoint_path,
                {"step": step, "input_scale": scale, "slots": list(saes.values()),
                 "twins": list(twin_states.values())},
            )

    def _twin(self, slot: TrainingSlot, state: dict) -> TrainingSlot:
        """A copy of `slot` in `state`, to train on as a run of `half_steps` steps would."""
        twin = TrainingSlot(slot.cfg, slot.sae.d_in, self.config.device, self.config.seed,
                            self.config.precision, slot.batch_ranks, slot.latent_ranks)
        twin.load_state(copy.deepcopy(state))
        return twin

    def _evaluate(self, evaluate: Evaluation, step: int, scale: float, slots,
                  run_steps: int) -> None:
        if self.parallel == "data" and not self.world.is_main:
            return  # every rank holds the same SAEs: the main rank evaluates them
        saes = {slot.cfg.name: _folded_copy(slot, scale) for slot in slots}  # gathers shards
        if self.parallel == "latents" and not self.world.is_main:
            return  # the main rank evaluates the gathered SAEs
        gathered = self._gather(evaluate(saes) if saes else {})
        if not self.world.is_main:
            return
        metrics = self._merged(gathered)
        tokens = step * self.config.batch_size
        lines = [
            json.dumps({"step": step, "tokens": tokens,
                        "run_tokens": run_steps * self.config.batch_size, "sae": name, **m})
            + "\n"
            for name, m in metrics.items()
        ]
        append_whole(self.curves_path, "".join(lines))

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


def _folded_copy(slot: TrainingSlot, scale: float) -> SAE:
    """A copy of the slot's SAE, whole, that maps raw activations (input scale folded in) and
    runs alone, outside the ranks its batches or latents were split over (sharded: a
    collective)."""
    sae = slot.sae.gathered()
    sae.batch_ranks = SINGLE_PROCESS
    sae.fold_input_scale_(scale)
    return sae


def _truncate_lines(path: Path, step: int) -> None:
    """Drop the JSON lines of `path` written after the checkpoint we resume from."""
    if not path.is_file():
        return
    keep = [
        line for line in path.read_text().splitlines() if line and json.loads(line)["step"] <= step
    ]
    atomic_write_text(path, "".join(line + "\n" for line in keep))


def _to_cpu(state):
    """A state dict with its tensors on the CPU, to gather across ranks and save."""
    if isinstance(state, torch.Tensor):
        return state.cpu()
    if isinstance(state, dict):
        return {k: _to_cpu(v) for k, v in state.items()}
    if isinstance(state, list):
        return [_to_cpu(v) for v in state]
    return state


def _log_rows(step, tokens, lr_scale, coef_scale, records, dead_tokens) -> list[dict]:
    """The logged metrics of a step, a row per SAE."""
    rows = []
    for slot, out, resampled in records:
        row = {
            "step": step,
            "tokens": tokens,
            "sae": slot.cfg.name,
            "lr": slot.cfg.lr * lr_scale,
            "sparsity_coef": slot.cfg.sparsity_coef * coef_scale,
            "loss": float(out.loss),
        }
        row.update({name: float(value) for name, value in out.terms.present().items()})
        row["l0"] = float(out.l0)
        if resampled is not None:
            row["resampled"] = float(resampled)
        row["dead_fraction"] = slot.dead_fraction(dead_tokens)
        rows.append(row)
    return rows


def _check_finite(rows: list[dict]) -> None:
    for row in rows:
        if not math.isfinite(row["loss"]):
            raise GatedSAEError(
                f"SAE {row['sae']} diverged (loss {row['loss']}) at step {row['step']}; "
                "lower its lr"
            )


class _Logger:
    """Per-step metrics as JSON lines (one per SAE), and to wandb when asked."""

    def __init__(self, path: Path, wandb_project: str | None, config: dict):
        self.path = path
        self.wandb = None
        if wandb_project:
            try:
                import wandb
            except ImportError:
                raise ConfigError(
                    "wandb_project is set but wandb is not installed (pip install wandb)"
                ) from None
            self.wandb = wandb.init(project=wandb_project, config=config)

    def log(self, rows: list[dict]) -> None:
        if self.wandb is not None:
            for row in rows:
                self.wandb.log(
                    {f"{row['sae']}/{k}": v for k, v in row.items() if k != "sae"},
                    step=row["step"],
                )
        # a step's lines whole, or none of them
        append_whole(self.path, "".join(json.dumps(row) + "\n" for row in rows))

    def close(self) -> None:
        if self.wandb is not None:
            self.wandb.finish()
