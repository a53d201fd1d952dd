"""Shared fixtures. Tiny language models are real transformers models with random weights,
built from small configs and saved to a temporary folder, so tests never need the network."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
import torch

# --- no network ----------------------------------------------------------------------------


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make any attempt to resolve or connect to a host fail loudly during the test."""

    def refuse(*args, **kwargs):
        raise AssertionError(f"test tried to use the network: {args}")

    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)


@pytest.fixture
def single_thread():
    """Run torch on one thread during the test, then restore the thread count.

    For tiny models, intra-op threads only cost: on a busy two-core machine the OpenMP
    threads contend, and a 32-wide matmul took 15 ms on two threads against 5 µs on one.
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# --- tiny language models ------------------------------------------------------------------

TINY_FAMILIES = ("llama", "gpt2", "gpt_neox")
TINY_VOCAB = 128  # model vocabulary; the tokenizer uses the first ids of it
TINY_N_CTX = 64
TINY_LAYERS = 3
TINY_D_MODEL = 32
_SENTENCES = [
    "the cat sat on the mat .",
    "a dog ran in the park and the cat watched it .",
    "sparse autoencoders find features in the residual stream of a language model .",
]


def save_tiny_tokenizer(folder: Path) -> None:
    """A word-level tokenizer trained on a few sentences, with `<bos>` = 0, saved to `folder`."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    trainer = trainers.WordLevelTrainer(special_tokens=["<bos>", "<eos>", "<unk>"])
    tok.train_from_iterator(_SENTENCES, trainer)
    wrapped = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>", unk_token="<unk>"
    )
    wrapped.save_pretrained(folder)


def tiny_config(family: str):
    """A small config of `family` (3 layers, d_model 32) with a larger init, so that the
    random model's predictions depend noticeably on its activations."""
    from transformers import GPT2Config, GPTNeoXConfig, LlamaConfig

    shared = dict(vocab_size=TINY_VOCAB, bos_token_id=0, eos_token_id=1, initializer_range=0.2)
    if family == "llama":
        return LlamaConfig(
            hidden_size=TINY_D_MODEL, intermediate_size=64, num_hidden_layers=TINY_LAYERS,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=TINY_N_CTX,
            **shared,
        )
    if family == "gpt2":
        return GPT2Config(
            n_embd=TINY_D_MODEL, n_layer=TINY_LAYERS, n_head=4, n_positions=TINY_N_CTX, **shared
        )
    if family == "gpt_neox":
        return GPTNeoXConfig(
            hidden_size=TINY_D_MODEL, intermediate_size=64, num_hidden_layers=TINY_LAYERS,
            num_attention_heads=4, max_position_embeddings=TINY_N_CTX, **shared,
        )
    raise ValueError(f"no tiny config for {family!r}")


def save_tiny_model(family: str, folder: Path, seed: int = 0) -> Path:
    """Build a randomly initialised causal LM of `family`, save it and a tokenizer to `folder`."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_config(family))
    model.save_pretrained(folder)
    save_tiny_tokenizer(folder)
    return folder


@pytest.fixture(scope="session", params=TINY_FAMILIES)
def tiny_model_dir(request: pytest.FixtureRequest, tmp_path_factory) -> Path:
    """A folder holding a tiny saved model and tokenizer; tests using it run once per family."""
    return save_tiny_model(request.param, tmp_path_factory.mktemp(f"tiny-{request.param}"))


@pytest.fixture(scope="session")
def tiny_lm(tiny_model_dir: Path):
    """The tiny model of `tiny_model_dir`, loaded through `load_model` (once per family)."""
    from gated_sae.data.lm import load_model

    return load_model(str(tiny_model_dir))


@pytest.fixture
def tiny_windows() -> torch.Tensor:
    """Random token windows [4, 12] starting with BOS (id 0), for the tiny models."""
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(3, TINY_VOCAB, (4, 12), generator=g)
    ids[:, 0] = 0
    return ids
