"""What a latent's decoder row says on its own: the tokens it promotes and suppresses through
the unembedding, and the latents whose decoder rows point the same way.

Direct logit effect. The model turns the final residual stream `x` into logits as
`W_U · norm(x)`, where the final norm is `norm(x) = L x / σ(x) + b`: a linear map `L` (the
norm's gain, after centring for a LayerNorm), divided by the scale `σ(x)` of the whole
residual stream (its RMS, or standard deviation), plus a constant. A latent adds `a · d` to
the stream (`d` its decoder row, `a` its activation), so its direct effect on the logits is
`a · W_U L d / σ(x)`. The browser shows `W_U L d`: per unit of activation, with `1/σ(x)`
(one positive number per token, the same for every latent and vocabulary entry) left out.
(SAE-Dashboard computes `W_U d` with TransformerLens' unembedding, into which the final
norm's gain is folded when the model was loaded with `fold_ln`.)

`L` is read off the model's own final-norm module, so that any gain convention (Gemma's
`1 + w`, say) is the one the model applies; see `norm_linear_map`.
"""

from __future__ import annotations

import copy
import math

import torch
from torch import nn

from ..data.lm import LanguageModel

# Where each family keeps its final norm, relative to the *ForCausalLM model.
FINAL_NORMS = {
    "llama": "model.norm", "mistral": "model.norm", "qwen2": "model.norm",
    "qwen3": "model.norm", "gemma": "model.norm", "gemma2": "model.norm",
    "gpt2": "transformer.ln_f", "gpt_neox": "gpt_neox.final_layer_norm",
}
_PROBE = 1e4  # large enough that the norm's epsilon is negligible against σ(probe)²


@torch.no_grad()
def norm_linear_map(norm: nn.Module, d_model: int) -> torch.Tensor:
    """The matrix `L` [d_model, d_model] of a norm `norm(x) = L x / σ(x) + b`, in float32.

    Probing with `t·e_j` for a large `t` gives `norm(t e_j) − norm(0) = L e_j / σ(e_j)`, and
    `σ(e_j)` is one number for all j: `√(1/n)` for an RMS norm, `√((1/n)(1 − 1/n))` for a
    LayerNorm (the standard deviation of a one-hot vector). The two are told apart by a
    constant vector, which a LayerNorm centres to zero.
    """
    norm = copy.deepcopy(norm).float()
    n = d_model
    weight = next(norm.parameters(), None)
    device = weight.device if weight is not None else torch.device("cpu")
    zero = norm(torch.zeros(1, n, device=device))
    probes = norm(_PROBE * torch.eye(n, device=device)) - zero  # row j: L e_j / σ(e_j)
    centred = bool((norm(_PROBE * torch.ones(1, n, device=device)) - zero).abs().max() < 1e-6)
    sigma = math.sqrt((1 / n) * (1 - 1 / n)) if centred else math.sqrt(1 / n)
    return probes.T * sigma


def unembedding(lm: LanguageModel) -> tuple[torch.Tensor, torch.Tensor] | None:
    """`(W_U [vocab, d_model], L [d_model, d_model])` in float32, or None for a model family
    whose final norm we do not know. The vocabulary is cut to the tokenizer's ids."""
    if lm.family not in FINAL_NORMS:
        return None
    norm = lm.model.get_submodule(FINAL_NORMS[lm.family])
    w_u = lm.model.get_output_embeddings().weight.detach()
    w_u = w_u[: min(w_u.shape[0], len(lm.tokenizer))].float()
    return w_u, norm_linear_map(norm, lm.d_model).to(w_u.device)


@torch.no_grad()
def logit_effects(w_dec: torch.Tensor, w_u: torch.Tensor, linear: torch.Tensor, n: int,
                  chunk: int = 256) -> dict[str, torch.Tensor]:
    """The `n` most promoted and most suppressed tokens of each decoder row, `W_U L d`:
    `{"up_ids", "up", "down_ids", "down"}`, each [d_sae, n], largest magnitude first."""
    up, up_ids, down, down_ids = [], [], [], []
    n = min(n, w_u.shape[0])
    for rows in w_dec.float().to(w_u.device).split(chunk):
        logits = (rows @ linear.T) @ w_u.T
        top = logits.topk(n, dim=1)
        bottom = logits.topk(n, dim=1, largest=False)
        up.append(top.values)
        up_ids.append(top.indices)
        down.append(bottom.values)
        down_ids.append(bottom.indices)
    return {"up_ids": torch.cat(up_ids).cpu(), "up": torch.cat(up).cpu(),
            "down_ids": torch.cat(down_ids).cpu(), "down": torch.cat(down).cpu()}


def unit_rows(w_dec: torch.Tensor) -> torch.Tensor:
    """Decoder rows scaled to unit length (a zero row stays zero), in float32."""
    w = w_dec.float()
    return w / w.norm(dim=1, keepdim=True).clamp_min(1e-12)


@torch.no_grad()
def nearest(a: torch.Tensor, b: torch.Tensor, n: int, *, same: bool,
            chunk: int = 1024) -> tuple[torch.Tensor, torch.Tensor]:
    """For each unit row of `a`, the `n` rows of `b` with the largest cosine, largest first:
    `(ids [len(a), n], cosines [len(a), n])`. With `same` (b is a) a row is not its own
    neighbour."""
    n = min(n, b.shape[0] - (1 if same else 0))
    ids, cos = [], []
    for start in range(0, a.shape[0], chunk):
        sims = a[start:start + chunk] @ b.T
        if same:
            rows = torch.arange(sims.shape[0], device=sims.device)
            sims[rows, rows + start] = float("-inf")
        top = sims.topk(n, dim=1)
        ids.append(top.indices)
        cos.append(top.values)
    return torch.cat(ids).cpu(), torch.cat(cos).cpu()


def match_summary(ab_ids: torch.Tensor, ab_cos: torch.Tensor, ba_ids: torch.Tensor,
                  ba_cos: torch.Tensor, thresholds=(0.9, 0.7, 0.5)) -> dict:
    """How well two SAEs' latents pair up by decoder cosine, from each side's best partner:
    per side the number of latents whose best partner is above each threshold, and the
    number of mutual best pairs (i's best is j and j's best is i)."""
    best_ab, best_ba = ab_ids[:, 0], ba_ids[:, 0]
    mutual = best_ba[best_ab] == torch.arange(len(best_ab))
    return {
        "a_above": {str(t): int((ab_cos[:, 0] >= t).sum()) for t in thresholds},
        "b_above": {str(t): int((ba_cos[:, 0] >= t).sum()) for t in thresholds},
        "mutual": int(mutual.sum()),
        "mutual_above": {str(t): int((mutual & (ab_cos[:, 0] >= t)).sum()) for t in thresholds},
        "a_latents": len(best_ab),
        "b_latents": len(best_ba),
    }
