"""Acceptance: on synthetic data with known features (Sharkey et al. 2022), the ReLU, Gated and
TopK SAEs, trained together on one stream, recover the features (MMCS ≥ 0.9), and the Gated
SAE removes the ReLU SAE's shrinkage (γ ≈ 1 against γ < 1 at a similar L0), as in
Rajamanoharan et al. 2024.
Prints its numbers (pytest -s) and writes them to synthetic_recovery.json in its tmp folder."""

from __future__ import annotations

import json
import platform
import time

import pytest
import torch

from gated_sae.data.batches import ShuffledBatches
from gated_sae.data.synthetic import SyntheticFeatures
from gated_sae.evaluate.metrics import activation_metrics, mmcs
from gated_sae.train.trainer import TrainConfig, Trainer

D_SAE, BATCH, TOKENS, LR = 1024, 1024, 3_000_000, 1e-2
SAES = [
    {"arch": "relu", "d_sae": D_SAE, "lr": LR, "sparsity_coef": 2.0},
    {"arch": "gated", "d_sae": D_SAE, "lr": LR, "sparsity_coef": 3.0},
    {"arch": "topk", "d_sae": D_SAE, "lr": LR, "options": {"k": 5}},
]


@pytest.mark.slow
def test_relu_gated_topk_recover_synthetic_features(tmp_path):
    data = SyntheticFeatures(512, 128, mean_active=5, seed=0)
    train, held_out = data.sample(200_000), data.sample(20_000)  # one stream: disjoint samples
    config = TrainConfig(saes=SAES, batch_size=BATCH, tokens=TOKENS, seed=0,
                         checkpoint_every=0, lr_warmup_steps=50, log_every=100)
    start = time.perf_counter()
    saes = Trainer(config, tmp_path / "run").fit(ShuffledBatches(train, BATCH, seed=0))
    seconds = time.perf_counter() - start

    results = {}
    for name, sae in saes.items():
        m = activation_metrics(sae, held_out.split(4096))
        results[name] = {"mmcs": mmcs(sae.W_dec, data.features), "gamma": m["gamma"],
                         "l0": m["l0"], "fvu": m["fvu"], "dead_fraction": m["dead_fraction"]}
    record = {
        "data": {"n_features": 512, "d": 128, "mean_active": 5, "seed": 0,
                 "train_samples": len(train), "held_out_samples": len(held_out)},
        "train": {"d_sae": D_SAE, "batch_size": BATCH, "tokens": TOKENS, "lr": LR,
                  "saes": SAES},
        "results": results, "train_seconds": round(seconds, 1),
        "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
        "machine": platform.machine(),
    }
    (tmp_path / "synthetic_recovery.json").write_text(json.dumps(record, indent=2) + "\n")
    print(f"\nsynthetic recovery, {TOKENS:,} tokens in {seconds:.0f} s "
          f"({torch.get_num_threads()} threads)")
    for name, r in results.items():
        print(f"  {name:6s} " + "  ".join(f"{k} {v:.3f}" for k, v in r.items()))

    relu, gated = results["relu"], results["gated"]
    assert all(r["mmcs"] >= 0.9 for r in results.values()), results
    assert abs(gated["gamma"] - 1) <= 0.02, gated
    assert relu["gamma"] < 0.95, relu  # shrinkage
    assert 0.5 <= relu["l0"] / gated["l0"] <= 2, (relu["l0"], gated["l0"])
