"""`gated-sae sweep`: a grid of SAEs trained on one cache, each batch read once per pass,
every finished SAE evaluated on held-out text and appended to `results.csv`.

A grid entry names an architecture and lists of values to cross: `d_sae`, `lr`,
`sparsity_coef`, `k`, `seeds`, with fixed `options` and the `role` tags that say which
question the entry serves. The same SAE requested by two entries is trained once and
carries both roles. SAEs are trained in passes: those sharing a seed and a token budget
read the same batches, up to `max_saes_per_pass` at a time. Rerunning resumes: SAEs already
in `results.csv` are not trained again, and an interrupted pass resumes from its checkpoint.

Beside results.csv the folder gets what a report needs to judge the SAEs: `curves.csv`
(held-out L0, FVU and loss recovered during training, and from them each SAE's convergence)
and `heldout.npz` (the held-out metrics as per-window sums, for a bootstrap over tokens;
evaluate/heldout.py).
"""

from __future__ import annotations

import csv
import itertools
import json
import math
import os
import platform
import time
from dataclasses import asdict, dataclass, field, fields
from importlib import resources
from pathlib import Path

import numpy as np
import torch
import yaml

from .. import __version__
from ..data.batches import cache_batches
from ..data.cache import build_cache, load_cache
from ..data.corpus import DEFAULT_CONTEXT_SIZE, DEFAULT_DATASET, check_skip_positions
from ..data.lm import DEFAULT_MODEL, DEFAULT_SITE
from ..data.source import ActivationSource
from ..distributed import SINGLE_PROCESS, World
from ..errors import ConfigError, DataError, check_positive_int
from ..evaluate.heldout import ACTIVATION_SUMS, LM_SHARED_SUMS, LM_SUMS, SHARED_SUMS
from ..evaluate.pipeline import evaluate_saes, heldout_windows, site_activations
from ..files import atomic_write_bytes, atomic_write_text
from ..saes import architecture_options, variant_label
from ..train.trainer import SAEConfig, TrainConfig, Trainer, default_lr
from . import pareto
from .results import (
    CONVERGENCE_REACH,
    CONVERGENCE_TOLERANCE,
    METRICS,
    half_budget_end,
    results_text,
)

PRESETS = ("questions", "paper")
CURVE_METRICS = ("l0", "fvu", "loss_recovered")
ROLES = ("lr_sweep", "ablation", "width", "equal_compute", "seeds")
GRID_KEYS = {"arch", "d_sae", "lr", "sparsity_coef", "k", "options", "seeds", "role"}


@dataclass
class SweepConfig:
    """A sweep: where activations come from, what every SAE shares, and the grid.

    With an existing `cache`, the activations' model, site, dataset and context size are the
    cache's: those settings may be left out, and one that differs is an error. Without one,
    they default to the package's defaults and the cache is built in DIR/cache.
    """

    grid: list[dict]
    model: str | None = field(default=None, metadata={
        "help": f"the language model (default: the cache's, else {DEFAULT_MODEL})"})
    site: str | None = field(default=None, metadata={
        "help": f"the activation site (default: the cache's, else {DEFAULT_SITE})"})
    dataset: str | None = field(default=None, metadata={
        "help": f"the corpus (default: the cache's, else {DEFAULT_DATASET})"})
    cache: str | None = field(default=None, metadata={
        "help": "an existing activation cache folder (default: build one in DIR/cache)"})
    cache_tokens: int = field(default=200_000, metadata={"help": "tokens to cache"})
    context_size: int | None = field(default=None, metadata={
        "help": f"tokens per window (default: the cache's, else {DEFAULT_CONTEXT_SIZE})"})
    skip_positions: int = field(default=1, metadata={
        "help": "leading positions of each window kept out of training and metrics "
                "(1: BOS; 2: BOS and the first token, for models that put outliers there)"})
    tokens: int = field(default=500_000, metadata={"help": "training tokens per SAE"})
    tokens_per_latent: int | None = field(default=None, metadata={
        "help": "if set, an SAE trains on max(tokens, this × d_sae) tokens: wider "
                "dictionaries need more"})
    batch_size: int = field(default=1024, metadata={"help": "activations per SAE step"})
    seeds: list[int] = field(default_factory=lambda: [0])
    main_width: int | None = field(default=None, metadata={
        "help": "the width of the frontiers and ablations"})
    max_saes_per_pass: int = field(default=16, metadata={
        "help": "SAEs trained together on one read of the cache"})
    eval_windows: int = field(default=32, metadata={
        "help": "held-out windows for the activation metrics"})
    lm_eval_windows: int | None = field(default=None, metadata={
        "help": "the first of them for the LM metrics, a forward each (default: all)"})
    curve_points: int = field(default=8, metadata={
        "help": "held-out evaluations during training, evenly spaced, the last at the end"})
    curve_windows: int = field(default=32, metadata={
        "help": "the first held-out windows the training curves' L0 and FVU are measured on"})
    curve_lm_windows: int = field(default=8, metadata={
        "help": "the first of them for the curves' loss recovered, a forward each"})
    device: str = field(default="cpu", metadata={"help": "cpu, cuda or cuda:N"})
    train: dict = field(default_factory=dict)  # further TrainConfig settings

    @classmethod
    def from_dict(cls, raw: dict) -> SweepConfig:
        known = {f.name for f in fields(cls)}
        if not isinstance(raw, dict):
            raise ConfigError("a sweep config must be a mapping with at least 'grid'")
        unknown = sorted(set(raw) - known)
        if unknown:
            raise ConfigError(
                f"unknown sweep setting {unknown[0]!r}; accepted: {', '.join(sorted(known))}"
            )
        if not isinstance(raw.get("grid"), list) or not raw["grid"]:
            raise ConfigError("a sweep config needs a non-empty list 'grid' of entries with 'arch'")
        return cls(**raw)


def load_sweep_config(path: str | None = None, preset: str | None = None) -> SweepConfig:
    """A sweep config from a YAML file, or one of the presets shipped with the package."""
    if preset is not None:
        if preset not in PRESETS:
            raise ConfigError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
        text = (
            resources.files("gated_sae.experiments").joinpath(f"presets/{preset}.yaml").read_text()
        )
    else:
        try:
            text = Path(path).read_text()
        except OSError as e:
            raise DataError(f"cannot read sweep config {path}: {e.strerror}") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError(
            f"sweep config {path} is not valid YAML: {str(e).splitlines()[0]}"
        ) from None
    return SweepConfig.from_dict(raw)


@dataclass
class SweepPoint:
    """One SAE of the grid, with the seed of its pass and the roles it serves."""

    sae: SAEConfig
    seed: int
    tokens: int
    roles: set[str]

    @property
    def variant(self) -> str:
        return variant_label(self.sae.arch, self.sae.options)


def _as_list(value) -> list:
    return value if isinstance(value, list) else [value]


def expand_grid(config: SweepConfig) -> list[SweepPoint]:
    """Every SAE of the grid, deduplicated by name, in a fixed order."""
    points: dict[str, SweepPoint] = {}
    for entry in config.grid:
        if not isinstance(entry, dict) or "arch" not in entry:
            raise ConfigError(f"grid entry {entry!r} needs at least 'arch'")
        unknown = sorted(set(entry) - GRID_KEYS)
        if unknown:
            raise ConfigError(
                f"unknown grid key {unknown[0]!r}; accepted: {', '.join(sorted(GRID_KEYS))}"
            )
        arch = entry["arch"]
        architecture_options(arch)
        roles = set(_as_list(entry.get("role", [])))
        if roles - set(ROLES):
            raise ConfigError(
                f"unknown role {sorted(roles - set(ROLES))[0]!r}; accepted: {', '.join(ROLES)}"
            )
        axes = [
            _as_list(entry.get(key, default))
            for key, default in (
                ("d_sae", None),
                ("lr", None),
                ("sparsity_coef", None),
                ("k", None),
                ("seeds", config.seeds),
            )
        ]
        for d_sae, lr, coef, k, seed in itertools.product(*axes):
            if d_sae is None:
                raise ConfigError(f"grid entry for {arch} needs d_sae")
            options = dict(entry.get("options", {}))
            if k is not None:
                options["k"] = k
            tokens = max(config.tokens, (config.tokens_per_latent or 0) * d_sae)
            if lr is None:
                lr = default_lr(arch, d_sae, tokens // config.batch_size)
            sae = SAEConfig(arch, d_sae, lr=lr, sparsity_coef=coef, options=options)
            sae.name = point_name(sae, seed)
            if sae.name in points:
                points[sae.name].roles |= roles
            else:
                points[sae.name] = SweepPoint(sae, seed, tokens, set(roles))
    return list(points.values())


def point_name(sae: SAEConfig, seed: int) -> str:
    level = f"k{sae.options['k']}" if "k" in sae.options else f"c{sae.sparsity_coef:g}"
    variant = variant_label(sae.arch, sae.options).replace(" ", "-").replace("_", "")
    return f"{variant}_d{sae.d_sae}_lr{sae.lr:g}_{level}_s{seed}"


def plan_passes(points: list[SweepPoint], max_per_pass: int) -> list[tuple[str, list[SweepPoint]]]:
    """Group SAEs sharing a seed and a token budget into passes of at most `max_per_pass`,
    deterministically."""
    passes = []
    for seed, tokens in sorted({(p.seed, p.tokens) for p in points}):
        group = [p for p in points if (p.seed, p.tokens) == (seed, tokens)]
        for i in range(0, len(group), max_per_pass):
            passes.append((f"seed{seed}-t{tokens}-pass{i // max_per_pass:03d}",
                           group[i : i + max_per_pass]))
    return passes


def convergence(family: dict[str, list[dict]]) -> dict[str, dict]:
    """Whether twice the training tokens still improved the SAEs of a family (SAEs that
    differ only in sparsity level, trained on the same batches), from their curve points:
    each SAE at the end of its run against the family's half-budget frontier (the twins:
    the same SAEs as runs of half the tokens end, lr decayed; `TrainConfig.half_budget`),
    read at the SAE's L0 (`_read`). At a fixed λ, L0 moves as an SAE trains, so an SAE's
    change against its own twin would mostly measure a move along the frontier. `lr_change`
    is the loss recovered's difference, `fvu_change` FVU's relative to the final value (both
    NaN where the frontier cannot be read there), and `converged` says whether
    |lr_change| < CONVERGENCE_TOLERANCE."""
    halves = [p for p in map(half_budget_end, family.values()) if p is not None and p["l0"] > 0]
    out = {}
    for name, curve in family.items():
        final = curve[-1]
        lr_change = fvu_change = math.nan
        if halves and final["l0"] > 0:
            lr_change = final["loss_recovered"] - _read(halves, "loss_recovered", final["l0"])
            fvu_change = (final["fvu"] - _read(halves, "fvu", final["l0"], -1)) / final["fvu"]
        out[name] = {"lr_change": lr_change, "fvu_change": fvu_change,
                     "converged": int(abs(lr_change) < CONVERGENCE_TOLERANCE)}
    return out


def _read(points: list[dict], metric: str, l0: float, sign: int = 1) -> float:
    """`metric` at `l0` on the upper envelope of sign·`metric` over `points` (sign −1 for a
    metric where lower is better): linear in log L0 between envelope points, along the end
    segment up to CONVERGENCE_REACH beyond either end, NaN further out; a single envelope
    point's own value within that reach."""
    found = pareto.envelope(np.array([p["l0"] for p in points]),
                            sign * np.array([p[metric] for p in points]))
    x, y = np.log(found[0]), found[1]
    t = math.log(l0)
    if not x[0] - math.log(CONVERGENCE_REACH) <= t <= x[-1] + math.log(CONVERGENCE_REACH):
        return math.nan
    if len(x) == 1:
        return sign * float(y[0])
    i = int(np.clip(np.searchsorted(x, t) - 1, 0, len(x) - 2))
    return sign * float(y[i] + (y[i + 1] - y[i]) * (t - x[i]) / (x[i + 1] - x[i]))


class Sweep:
    """Runs a SweepConfig into a folder: cache, passes, evaluation, results.csv.

    In a `world` of several ranks (torchrun) each pass's SAEs are spread over the ranks, which
    all read the same batches and evaluate their own SAEs; the ranks share the caching, and
    rank 0 writes the tables, so the folder is the one a single process writes.
    """

    def __init__(self, config: SweepConfig, out: str | Path, world: World = SINGLE_PROCESS):
        self.config, self.out = config, Path(out)
        self.world = world
        self.points = expand_grid(config)
        for name in ("max_saes_per_pass", "eval_windows", "curve_points", "curve_windows",
                     "curve_lm_windows"):
            check_positive_int(name, getattr(config, name))
        if config.lm_eval_windows is not None:
            check_positive_int("lm_eval_windows", config.lm_eval_windows)
        if config.tokens_per_latent is not None:
            check_positive_int("tokens_per_latent", config.tokens_per_latent)
        self.results_path = self.out / "results.csv"
        self.curves_path = self.out / "curves.csv"
        self.heldout_path = self.out / "heldout.npz"
        self._lm = None
        self._model_dtype = None  # the cache's: its activations came from the model in it
        self._heldout_set = None

    def run(self) -> Path:
        cfg = self.config
        started = time.perf_counter()
        done = self._read_results()
        cache = self._cache()  # first: a bad model, site or corpus leaves no folder behind
        cache_seconds = time.perf_counter() - started
        self._model_dtype = cache.manifest.get("model_dtype")
        source = ActivationSource.of_cache(cache.manifest)
        source.check_agrees(f"cache {cache.path}", model=cfg.model, site=cfg.site,
                            dataset=cfg.dataset, context_size=cfg.context_size)
        check_skip_positions(cfg.skip_positions, source.context_size)
        world = self.world
        record = self._record(cache.d_in, source)
        if world.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
            atomic_write_text(self.out / "sweep.json", json.dumps(record, indent=2) + "\n")
        passes = plan_passes(self.points, cfg.max_saes_per_pass)
        for index, (pass_id, points) in enumerate(passes, 1):
            todo = [p for p in points if p.sae.name not in done]
            if not todo:
                continue
            if world.is_main:
                print(f"sweep pass {index}/{len(passes)}: {len(points)} SAEs ({pass_id})")
            train = TrainConfig(
                saes=[p.sae for p in points],
                batch_size=cfg.batch_size,
                tokens=points[0].tokens,
                seed=points[0].seed,
                device=cfg.device,
                **{"eval_every": max(1, points[0].tokens // cfg.batch_size // cfg.curve_points),
                   "half_budget": True, **cfg.train},
            )
            metadata = source.sae_metadata(skip_positions=cfg.skip_positions)
            trainer = Trainer(train, self.out / "passes" / pass_id, metadata, world)
            pass_started = time.perf_counter()
            batches = cache_batches(cache, cfg.batch_size, points[0].seed,
                                    skip_positions=cfg.skip_positions)
            saes = trainer.fit(batches, self._curve_evaluation(source))
            pass_seconds = time.perf_counter() - pass_started
            eval_started = time.perf_counter()
            mine = {p.sae.name: saes[p.sae.name] for p in todo if p.sae.name in saes}
            metrics = self._evaluate(mine, source) if mine else {}
            eval_seconds = (time.perf_counter() - eval_started) / max(1, len(mine))
            for m in metrics.values():
                m["eval_seconds"] = eval_seconds
            metrics = {k: v for ranks in world.all_gather(metrics) for k, v in ranks.items()}
            run = json.loads((trainer.out / "run.json").read_text())
            for point in todo:
                name = point.sae.name
                done[name] = {
                    **self._row(point, metrics[name]),
                    "train_dead_fraction": run["dead_fraction"][name],
                    "train_dead_tokens": train.dead_tokens,
                    "train_seconds": run["timing"]["step_seconds"][name],
                    "pass_seconds": pass_seconds,
                    "eval_seconds": metrics[name]["eval_seconds"],
                }
            curves = self._curves(passes, done)
            for family in self._families():
                done.update({name: {**done[name], **change} for name, change in
                             convergence({n: curves[n] for n in family if n in curves}).items()})
            if world.is_main:
                self._write_heldout({p.sae.name: metrics[p.sae.name]["windows"] for p in todo})
                self._write_curves(curves)
                self._write_results(done)
        if world.is_main:
            record["total_seconds"] = time.perf_counter() - started
            record["cache_seconds"] = cache_seconds
            atomic_write_text(self.out / "sweep.json", json.dumps(record, indent=2) + "\n")
        world.barrier()
        return self.results_path

    # --- data ---------------------------------------------------------------------------

    def _cache(self):
        """The existing cache, or one built in DIR/cache from the settings or the defaults."""
        cfg = self.config
        if cfg.cache is not None:
            return load_cache(cfg.cache)
        return load_cache(
            build_cache(
                self._model(cfg.model or DEFAULT_MODEL),
                cfg.site or DEFAULT_SITE,
                cfg.dataset or DEFAULT_DATASET,
                n_tokens=cfg.cache_tokens,
                out=self.out / "cache",
                context_size=DEFAULT_CONTEXT_SIZE if cfg.context_size is None else cfg.context_size,
                world=self.world,
            )
        )

    def _model(self, name: str, dtype: str | None = None):
        """The sweep's one model, loaded once: the one its cache is built from or holds."""
        if self._lm is None:
            from ..data.lm import load_model

            self._lm = load_model(name, device=self.config.device, dtype=dtype)
        return self._lm

    # --- evaluation and results ---------------------------------------------------------

    def _heldout(self, source: ActivationSource) -> tuple[torch.Tensor, torch.Tensor]:
        """The held-out windows of the cache's corpus and their activations at the site,
        read once by the cache's model."""
        if self._heldout_set is None:
            lm = self._model(source.model, self._model_dtype)
            windows = heldout_windows(lm, source, n_windows=self.config.eval_windows)
            acts = site_activations(lm, source.site, windows, self.config.skip_positions)
            self._heldout_set = windows, acts
        return self._heldout_set

    def _evaluate(self, saes: dict, source: ActivationSource) -> dict[str, dict]:
        """The SAEs' metrics on the same held-out windows, with their per-window sums."""
        windows, acts = self._heldout(source)
        return evaluate_saes(self._lm, saes, source.site, windows, acts=acts,
                             lm_windows=self.config.lm_eval_windows,
                             skip_positions=self.config.skip_positions, per_window=True)

    def _curve_evaluation(self, source: ActivationSource):
        """What the trainer measures for the training curves: L0 and FVU on the first
        `curve_windows` held-out windows, loss recovered on the first `curve_lm_windows`."""
        windows, acts = self._heldout(source)
        windows, acts = windows[: self.config.curve_windows], acts[: self.config.curve_windows]

        def evaluate(saes: dict) -> dict[str, dict]:
            metrics = evaluate_saes(self._lm, saes, source.site, windows, acts=acts,
                                    lm_windows=self.config.curve_lm_windows,
                                    skip_positions=self.config.skip_positions)
            return {name: {k: m[k] for k in CURVE_METRICS} for name, m in metrics.items()}

        return evaluate

    def _row(self, point: SweepPoint, metrics: dict) -> dict:
        sae = point.sae
        return {
            "name": sae.name,
            "arch": sae.arch,
            "variant": point.variant,
            "options": json.dumps(
                {k: v for k, v in sae.options.items() if k != "k"}, sort_keys=True
            ),
            "d_sae": sae.d_sae,
            "lr": sae.lr,
            "sparsity_coef": "" if "k" in sae.options else sae.sparsity_coef,
            "k": sae.options.get("k", ""),
            "seed": point.seed,
            "tokens": point.tokens,
            "batch_size": self.config.batch_size,
            "role": ";".join(sorted(point.roles)),
            **{m: metrics[m] for m in METRICS},
            "eval_tokens": metrics["n_tokens"],
            "lm_eval_tokens": metrics["lm_n_tokens"],
        }

    def _read_results(self) -> dict[str, dict]:
        if not self.results_path.is_file():
            return {}
        with self.results_path.open(newline="") as f:
            return {row["name"]: row for row in csv.DictReader(f)}

    def _write_results(self, rows: dict[str, dict]) -> None:
        order = {p.sae.name: i for i, p in enumerate(self.points)}
        names = sorted(rows, key=lambda n: order.get(n, math.inf))
        atomic_write_text(self.results_path, results_text(rows[name] for name in names))

    def _write_heldout(self, new: dict[str, dict]) -> None:
        """Add the SAEs' per-window sums to heldout.npz (the shared sums are the same for
        every pass: the same windows)."""
        per_sae: dict[str, dict] = {}
        shared: dict = {}
        if self.heldout_path.is_file():
            with np.load(self.heldout_path) as old:
                shared = {k: old[k] for k in (*SHARED_SUMS, "mu_sq", *LM_SHARED_SUMS)}
                for i, name in enumerate(old["names"].tolist()):
                    per_sae[name] = {k: old[k][i] for k in (*ACTIVATION_SUMS, *LM_SUMS)}
        for name, sums in new.items():
            shared = {k: sums[k] for k in (*SHARED_SUMS, "mu_sq", *LM_SHARED_SUMS)}
            per_sae[name] = {k: sums[k] for k in (*ACTIVATION_SUMS, *LM_SUMS)}
        names = list(per_sae)
        arrays = {k: np.stack([per_sae[n][k] for n in names]) for k in (*ACTIVATION_SUMS, *LM_SUMS)}
        atomic_write_bytes(
            self.heldout_path, lambda f: np.savez(f, names=np.array(names), **shared, **arrays)
        )

    def _curves(self, passes, rows: dict[str, dict]) -> dict[str, list[dict]]:
        """The curve points of every SAE in the results, from its pass, in grid order."""
        curves = {}
        for pass_id, points in passes:
            found = _read_curves(self.out / "passes" / pass_id / "curves.jsonl")
            for point in points:
                if point.sae.name in rows and point.sae.name in found:
                    curves[point.sae.name] = found[point.sae.name]
        return curves

    def _families(self) -> list[list[str]]:
        """The grid's SAEs grouped by all they share but the sparsity level."""
        families: dict[tuple, list[str]] = {}
        for p in self.points:
            key = (p.variant, p.sae.d_sae, p.sae.lr, p.seed, p.tokens)
            families.setdefault(key, []).append(p.sae.name)
        return list(families.values())

    def _write_curves(self, curves: dict[str, list[dict]]) -> None:
        lines = ["name,step,tokens,run_tokens," + ",".join(CURVE_METRICS)]
        for name, points in curves.items():
            for r in points:
                values = [r["step"], r["tokens"], r["run_tokens"], *(r[k] for k in CURVE_METRICS)]
                lines.append(",".join([name, *(repr(v) for v in values)]))
        atomic_write_text(self.curves_path, "\n".join(lines) + "\n")

    def _record(self, d_in: int, source: ActivationSource) -> dict:
        resolved = {k: getattr(source, k) for k in ("model", "site", "dataset", "context_size")}
        return {
            "config": {**asdict(self.config), **resolved},
            "d_in": d_in,
            "n_saes": len(self.points),
            "versions": {
                "gated_sae": __version__,
                "torch": torch.__version__,
                "python": platform.python_version(),
            },
            "machine": {
                "cpu": platform.processor() or platform.machine(),
                "cores": os.cpu_count(),
                "torch_threads": torch.get_num_threads(),
                "ranks": self.world.size,
                "device": self.config.device,
            },
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }


def _read_curves(path: Path) -> dict[str, list[dict]]:
    """A pass's curve points (curves.jsonl) by SAE name, in order of step."""
    curves: dict[str, list[dict]] = {}
    if path.is_file():
        for line in path.read_text().splitlines():
            row = json.loads(line)
            curves.setdefault(row["sae"], []).append(row)
    return curves
