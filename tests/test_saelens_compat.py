"""The acceptance point of the folder format: SAELens reads what we write, and we read what
SAELens writes, with the same encode/decode outputs (float32, max abs diff ≤ 1e-5)."""

import json

import pytest
import torch
from sae_lens import (
    SAE,
    GatedSAE,
    GatedSAEConfig,
    JumpReLUSAE,
    JumpReLUSAEConfig,
    StandardSAE,
    StandardSAEConfig,
    TopKSAE,
    TopKSAEConfig,
)

from gated_sae import DataError, create_sae, load_sae

pytestmark = pytest.mark.usefixtures("single_thread")  # tiny tensors: threads only contend
D_IN, D_SAE = 16, 48


def randomise_(module, seed=0):
    """Non-trivial weights and biases, so b_dec, the gate and magnitude biases, r_mag and the
    thresholds all matter; thresholds positive."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if name == "threshold":
                p.copy_(torch.rand(p.shape, generator=g) * 1.5 + 0.2)
            else:
                p.copy_(torch.randn(p.shape, generator=g) * (0.3 if name == "r_mag" else 0.5))
        if hasattr(module, "threshold_initialised"):  # batchtopk: one global threshold
            module.threshold.fill_(0.8)
            module.threshold_initialised.fill_(True)
    return module


def inputs(seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(64, D_IN, generator=g) * 1.5 + 0.5


def same(actual, expected):
    torch.testing.assert_close(actual, expected, atol=1e-5, rtol=0)


OURS = [
    ("relu", {}, StandardSAE),
    ("relu", {"decoder_norm_l1": True}, StandardSAE),
    ("gated", {}, GatedSAE),
    ("gated", {"b_mag": False, "r_mag": False}, GatedSAE),
    ("topk", {"k": 5}, TopKSAE),
    ("jumprelu", {}, JumpReLUSAE),
    ("batchtopk", {"k": 5}, JumpReLUSAE),
]


@pytest.mark.parametrize(("arch", "options", "cls"), OURS,
                         ids=[a + "".join(f"-{k}" for k in o) for a, o, _ in OURS])
def test_saelens_loads_our_folder(tmp_path, arch, options, cls):
    torch.manual_seed(0)
    ours = randomise_(create_sae(arch, d_in=D_IN, d_sae=D_SAE, **options))
    ours.save(tmp_path / "sae", metadata={"model_name": "tiny-lm", "hook_name": "blocks.1.x"})
    theirs = SAE.load_from_disk(tmp_path / "sae")
    assert type(theirs) is cls
    assert theirs.cfg.metadata.hook_name == "blocks.1.x"
    x = inputs()
    with torch.no_grad():
        f = ours.encode(x)
        assert 0.02 < (f != 0).float().mean() < 0.98
        same(theirs.encode(x), f)
        same(theirs.decode(f), ours.decode(f))
        same(theirs(x), ours(x))


def test_untied_gated_gets_a_name_of_its_own(tmp_path):
    ours = randomise_(create_sae("gated", d_in=D_IN, d_sae=D_SAE, tied=False))
    ours.save(tmp_path / "sae")
    cfg = json.loads((tmp_path / "sae" / "cfg.json").read_text())
    assert cfg["architecture"] == "gated_untied"  # never misread as SAELens's tied gated
    x = inputs()
    with torch.no_grad():
        assert torch.equal(load_sae(tmp_path / "sae")(x), ours(x))


def test_uncentred_untied_gated_folds_into_both_paths(tmp_path):
    """With apply_b_dec_to_input false each path takes `x W + b`, the magnitude path with
    its own W_mag (SAELens has no untied gated to compare with)."""
    ours = randomise_(create_sae("gated", d_in=D_IN, d_sae=D_SAE, tied=False))
    ours.save(tmp_path / "sae")
    cfg_file = tmp_path / "sae" / "cfg.json"
    cfg_file.write_text(json.dumps({**json.loads(cfg_file.read_text()),
                                    "apply_b_dec_to_input": False}))
    w = {name: t.double() for name, t in ours.state_dict().items()}
    x = inputs().double()
    pi_gate, pi_mag = x @ w["W_enc"] + w["b_gate"], x @ w["W_mag"] + w["b_mag"]
    expected = (pi_gate > 0) * pi_mag.clamp(min=0)
    assert 0.02 < (expected != 0).double().mean() < 0.98
    with torch.no_grad():
        same(load_sae(tmp_path / "sae").encode(x.float()), expected.float())


SAELENS = {"standard": (StandardSAE, StandardSAEConfig), "gated": (GatedSAE, GatedSAEConfig),
           "topk": (TopKSAE, TopKSAEConfig), "jumprelu": (JumpReLUSAE, JumpReLUSAEConfig)}
THEIRS = [
    ("standard", {}, "relu"),
    ("standard", {"apply_b_dec_to_input": False}, "relu"),
    ("gated", {}, "gated"),
    ("gated", {"apply_b_dec_to_input": False}, "gated"),
    ("topk", {"k": 5}, "topk"),
    ("topk", {"k": 5, "rescale_acts_by_decoder_norm": True, "apply_b_dec_to_input": False},
     "topk"),
    ("jumprelu", {}, "jumprelu"),
    ("jumprelu", {"apply_b_dec_to_input": False}, "jumprelu"),
    ("jumprelu", {"normalize_activations": "expected_average_only_in"}, "jumprelu"),
]


def saelens_folder(path, arch, **cfg):
    cls, cfg_cls = SAELENS[arch]
    theirs = randomise_(cls(cfg_cls(d_in=D_IN, d_sae=D_SAE, **cfg)))
    theirs.save_model(path)
    return theirs


@pytest.mark.parametrize(("arch", "cfg", "ours_arch"), THEIRS,
                         ids=[a + "".join(f"-{k}" for k in c) for a, c, _ in THEIRS])
def test_we_load_saelens_folder(tmp_path, arch, cfg, ours_arch):
    theirs = saelens_folder(tmp_path / "sae", arch, **cfg)
    ours = load_sae(tmp_path / "sae")
    assert ours.architecture == ours_arch
    if arch == "topk":
        assert ours.k == 5
    x = inputs()
    with torch.no_grad():
        f = theirs.encode(x)
        assert 0.02 < (f != 0).float().mean() < 0.98
        same(ours.encode(x), f)
        same(ours.decode(f), theirs.decode(f))
        same(ours(x), theirs(x))


@pytest.mark.parametrize("norm", ["layer_norm", "constant_norm_rescale"])
def test_run_time_normalisation_is_refused(tmp_path, norm):
    saelens_folder(tmp_path / "sae", "standard", normalize_activations=norm)
    with pytest.raises(DataError, match=f"cfg.json.*{norm}"):
        load_sae(tmp_path / "sae")
