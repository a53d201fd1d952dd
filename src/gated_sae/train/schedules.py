"""Learning-rate and sparsity-coefficient schedules, as multipliers of the configured value."""


def lr_factor(step: int, total_steps: int, warmup_steps: int, decay_fraction: float) -> float:
    """Linear warm-up from 0 over `warmup_steps`, flat, then linear decay to 0 over the last
    `decay_fraction` of training (Anthropic's April 2024 update; Gao et al. use a similar tail)."""
    factor = 1.0
    if warmup_steps > 0:
        factor = min(factor, (step + 1) / warmup_steps)
    decay_steps = int(decay_fraction * total_steps)
    if decay_steps > 0:
        factor = min(factor, (total_steps - step) / decay_steps)
    return max(factor, 0.0)


def sparsity_factor(step: int, total_steps: int, warmup_fraction: float) -> float:
    """Linear warm-up of the sparsity coefficient from 0 over the first `warmup_fraction` of
    training (Rajamanoharan et al. 2024b; Conerly et al. 2024), so latents are not killed
    before they have found directions."""
    warmup_steps = int(warmup_fraction * total_steps)
    if warmup_steps <= 0:
        return 1.0
    return min(1.0, (step + 1) / warmup_steps)
