"""One streaming pass over token windows: what the browser shows about each latent.

For every SAE and latent, in memory proportional to d_sae × samples and independent of the
number of tokens:

- how often it fires (`f > 0`) and the sum of its activations;
- a histogram of its nonzero activations in log2 bins (`BINS_PER_OCTAVE` per octave from
  2^LOG2_LOW to 2^LOG2_HIGH; values beyond either end count in the end bins);
- its `top` largest activations over every token seen (exactly the top-k: a candidate enters
  when it beats the k-th value held, and ties go to the earlier token);
- a uniform random sample of `random` of its firings (reservoir sampling: each firing gets
  an i.i.d. uniform key and the sample is the firings with the largest keys, so every
  subset of that size is equally likely);

each sample with the tokens of its window from `before` tokens before to `after` tokens after
it, and the latent's activations on them. The first `skip_positions` positions of every window
(1: BOS) are left out of everything, contexts included: SAEs are trained without them, and
their activations are outliers the model uses as an attention sink (SmolLM2 puts outliers on
the token after BOS too, so its SAEs skip 2; docs/training.md).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from ..data.lm import LanguageModel
from ..saes import SAE

LOG2_LOW, LOG2_HIGH, BINS_PER_OCTAVE = -16, 16, 8
N_BINS = (LOG2_HIGH - LOG2_LOW) * BINS_PER_OCTAVE


def histogram_bins(values: torch.Tensor) -> torch.Tensor:
    """The log2 bin of each positive value: bin b holds [2^(LOW + b/8), 2^(LOW + (b+1)/8))."""
    bins = ((torch.log2(values.float()) - LOG2_LOW) * BINS_PER_OCTAVE).floor()
    return bins.clamp(0, N_BINS - 1).long()


def bin_edges() -> torch.Tensor:
    """The N_BINS + 1 edges of the histogram bins, as float64."""
    return 2.0 ** (LOG2_LOW + torch.arange(N_BINS + 1, dtype=torch.float64) / BINS_PER_OCTAVE)


@dataclass
class Samples:
    """Per latent, the `size` firings with the largest scores so far, in no particular order
    (`in_order` sorts them).

    `score` ranks the samples (the activation for the top-k, a random key for the reservoir)
    and is -inf in empty slots; `floor` [d] is each latent's lowest held score, which a
    newcomer must beat; `position` is the global index `window × context + t` of the token
    (-1 when empty); `tokens` [d, size, span] are the window's token ids around it (-1 outside
    the window or at a skipped position) and `acts` the latent's activations on them.
    """

    score: torch.Tensor
    floor: torch.Tensor
    value: torch.Tensor
    position: torch.Tensor
    tokens: torch.Tensor
    acts: torch.Tensor

    @classmethod
    def empty(cls, d_sae: int, size: int, span: int, device: torch.device) -> Samples:
        return cls(
            score=torch.full((d_sae, size), float("-inf"), device=device),
            floor=torch.full((d_sae,), float("-inf"), device=device),
            value=torch.zeros(d_sae, size, device=device),
            position=torch.full((d_sae, size), -1, dtype=torch.long, device=device),
            tokens=torch.full((d_sae, size, span), -1, dtype=torch.int32, device=device),
            acts=torch.zeros(d_sae, size, span, device=device),
        )

    def offer(self, latent: torch.Tensor, score: torch.Tensor, describe) -> None:
        """Merge candidate firings (`latent` and `score`: 1-d tensors over the candidates).

        A candidate gets in if it is among its latent's `size` best of held and new, ties
        going to the held ones and then to earlier candidates; it takes the slot of a held
        sample it pushes out, so held samples never move. `describe(index)` gives the
        (value, position, tokens, acts) of the candidates at `index`, and is called only for
        those that get in.
        """
        size = self.score.shape[1]
        index = (score > self.floor[latent]).nonzero().squeeze(1)
        if len(index) == 0:
            return
        rows, group = torch.unique(latent[index], return_inverse=True)
        held = len(rows) * size
        # Rows' held entries (empty slots too) first: every row then has at least `size`
        # entries, and the stable sorts put held entries ahead of equal newcomers.
        group = torch.cat([torch.arange(len(rows), device=rows.device).repeat_interleave(size),
                           group])
        order = torch.argsort(torch.cat([self.score[rows].flatten(), score[index]]),
                              descending=True, stable=True)
        order = order[torch.argsort(group[order], stable=True)]
        counts = torch.bincount(group, minlength=len(rows))
        rank = torch.arange(len(order), device=order.device) - (torch.cumsum(counts, 0)
                                                                 - counts)[group[order]]
        # Per row, as many held entries fall out as newcomers get in; both lists are in row
        # order, so the k-th newcomer takes the k-th freed slot.
        freed = order[(rank >= size) & (order < held)]
        entering = index[order[(rank < size) & (order >= held)] - held]
        row, slot = rows[freed // size], freed % size
        self.score[row, slot] = score[entering]
        value, position, tokens, acts = describe(entering)
        self.value[row, slot] = value
        self.position[row, slot] = position
        self.tokens[row, slot] = tokens
        self.acts[row, slot] = acts
        self.floor[rows] = self.score[rows].min(dim=1).values

    def in_order(self) -> Samples:
        """The samples of each latent best first (equal scores: earlier tokens first)."""
        order = torch.argsort(self.position, dim=1, stable=True)
        by_score = torch.argsort(self.score.gather(1, order), dim=1, descending=True, stable=True)
        order = order.gather(1, by_score)
        expand = order[:, :, None].expand_as(self.tokens)
        return Samples(self.score.gather(1, order), self.floor, self.value.gather(1, order),
                       self.position.gather(1, order), self.tokens.gather(1, expand),
                       self.acts.gather(1, expand))


class LatentStats:
    """The running statistics of one SAE's latents (see the module docstring)."""

    def __init__(self, d_sae: int, *, context_size: int, top: int, random: int, before: int,
                 after: int, skip_positions: int = 1, seed: int = 0,
                 device: str | torch.device = "cpu"):
        device = torch.device(device)
        self.d_sae, self.context_size, self.skip_positions = d_sae, context_size, skip_positions
        self.before, self.after = before, after
        span = before + 1 + after
        self.n_tokens = 0
        self.fired = torch.zeros(d_sae, dtype=torch.long, device=device)
        self.total = torch.zeros(d_sae, dtype=torch.float64, device=device)
        self.histogram = torch.zeros(d_sae, N_BINS, dtype=torch.long, device=device)
        self.top = Samples.empty(d_sae, top, span, device)
        self.random = Samples.empty(d_sae, random, span, device)
        self.generator = torch.Generator(device).manual_seed(seed)

    def update(self, f: torch.Tensor, windows: torch.Tensor, first_window: int) -> None:
        """Add the latents `f` [B, T-s, d_sae] of positions s.. (s = `skip_positions`) of
        `windows` [B, T], which are windows `first_window, first_window + 1, …` of the stream."""
        batch, length, d = f.shape
        flat = f.reshape(-1, d)
        row, latent = (flat > 0).nonzero(as_tuple=True)
        value = flat[row, latent]
        self.n_tokens += batch * length
        self.fired += torch.bincount(latent, minlength=d)
        self.total.index_add_(0, latent, value.double())
        self.histogram.view(-1).index_add_(
            0, latent * N_BINS + histogram_bins(value), torch.ones_like(latent))
        offsets = torch.arange(-self.before, self.after + 1, device=f.device)
        text = windows[:, self.skip_positions:].to(f.device, torch.int32)

        def describe(index: torch.Tensor):
            """Value, global position and the span of tokens and activations of pairs."""
            r, lat = row[index], latent[index]
            w, t = r // length, r % length
            # token t of `f` is at position t + s of its window
            position = (first_window + w) * self.context_size + t + self.skip_positions
            around = t[:, None] + offsets
            inside = (around >= 0) & (around < length)
            around = around.clamp(0, length - 1)
            tokens = torch.where(inside, text[w[:, None], around], -1)
            acts = torch.where(inside, flat[w[:, None] * length + around, lat[:, None]], 0.0)
            return value[index], position, tokens, acts

        self.top.offer(latent, value, describe)
        keys = torch.rand(len(value), generator=self.generator, device=f.device)
        self.random.offer(latent, keys, describe)

    def finished(self) -> LatentStats:
        """These statistics on the CPU, each latent's samples best first (for writing)."""
        for name, value in vars(self).items():
            if isinstance(value, torch.Tensor):
                setattr(self, name, value.cpu())
            elif isinstance(value, Samples):
                ordered = value.in_order()
                setattr(self, name, Samples(*(t.cpu() for t in vars(ordered).values())))
        return self


def collect(
    lm: LanguageModel,
    saes: Mapping[str, SAE],
    site: str,
    batches: Iterable[torch.Tensor],
    *,
    context_size: int,
    skip_positions: int = 1,
    n_tokens: int | None = None,
    progress: bool = True,
    **options,
) -> dict[str, LatentStats]:
    """Run the model once over `batches` of token windows [B, context_size] (BOS first),
    encode the activations at `site` past the first `skip_positions` positions with every
    SAE and gather each one's statistics.

    `n_tokens` (all tokens of all batches) sizes the progress bar; `options` go to
    `LatentStats` (top, random, before, after, seed).
    """
    stats = {name: LatentStats(sae.d_sae, context_size=context_size,
                               skip_positions=skip_positions, device=sae.W_dec.device,
                               **options) for name, sae in saes.items()}
    seen = 0
    with tqdm(total=n_tokens, unit="tok", unit_scale=True, desc="browse",
              disable=not progress) as bar, torch.inference_mode():
        for windows in batches:
            acts = lm.activations(windows, site)[:, skip_positions:]
            for name, sae in saes.items():
                x = acts.reshape(-1, acts.shape[-1]).to(sae.W_dec.device, sae.W_dec.dtype)
                f = sae.encode(x).float().view(*acts.shape[:2], sae.d_sae)
                stats[name].update(f, windows, seen)
            seen += windows.shape[0]
            bar.update(windows.numel())
    return stats
