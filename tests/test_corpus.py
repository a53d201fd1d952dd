"""Corpora and token windows: builtin corpora, local files, HF datasets, windows and the split."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from gated_sae.data import corpus
from gated_sae.data.corpus import (
    HELDOUT_EVERY,
    check_context_size,
    iter_documents,
    iter_windows,
    python_docs_documents,
    token_windows,
)
from gated_sae.errors import ConfigError, DataError

BOS, EOS, N_WORDS = 0, 1, 500


@pytest.fixture(scope="module")
def word_tokenizer():
    """A word-level tokenizer over words w0..w499: word wK is id K + 3 (0 BOS, 1 EOS, 2 UNK)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<bos>": BOS, "<eos>": EOS, "<unk>": 2, **{f"w{k}": k + 3 for k in range(N_WORDS)}}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>", unk_token="<unk>"
    )


def random_docs(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(f"w{rng.randrange(N_WORDS)}" for _ in range(rng.randint(1, 40)))
            for _ in range(n)]


def ids_of(doc: str) -> list[int]:
    return [int(word[1:]) + 3 for word in doc.split()]


def write_jsonl(path: Path, docs: list[str], field: str = "text") -> Path:
    path.write_text("".join(json.dumps({field: d, "n": i}) + "\n" for i, d in enumerate(docs)))
    return path


# --- builtin corpora -------------------------------------------------------------------------


def test_builtin_python_docs_is_deduplicated_english_from_a_clean_interpreter():
    import transformers  # noqa: F401  patches logging.Logger in this process; must not leak in

    docs = list(python_docs_documents())
    assert len(docs) > 3000 and sum(map(len, docs)) > 1_000_000
    assert len(set(docs)) == len(docs)
    assert all(d == d.strip() and d for d in docs)
    assert docs[0].startswith('The "assert" statement')  # pydoc topics come first, sorted
    joined = "\n".join(docs)
    assert "Serialize ``obj`` to a JSON formatted ``str``" in joined  # json.dumps
    # torch replaces inspect.getfile in this process; the corpus keeps the original's text
    assert "Work out which source or compiled file an object was defined in." in docs
    assert "TRANSFORMERS_NO_ADVISORY_WARNINGS" not in joined


def test_builtin_corpus_is_identical_on_every_read():
    first = list(iter_documents("builtin:python-docs"))
    corpus._extract.cache_clear()
    assert list(iter_documents("builtin:python-docs")) == first
    source = list(iter_documents("builtin:python-source"))
    assert len(source) > 100 and any("def dumps(" in text for text in source)


def test_builtin_windows_start_with_bos(word_tokenizer):
    windows = token_windows(word_tokenizer, context_size=8, n_windows=50)
    assert windows.shape == (50, 8) and windows.dtype == torch.long
    assert (windows[:, 0] == BOS).all()


# --- local files ------------------------------------------------------------------------------


def test_txt_jsonl_parquet_round_trip_and_folder_order(tmp_path: Path):
    docs = random_docs(9)
    folder = tmp_path / "corpus"
    (folder / "sub").mkdir(parents=True)
    (folder / "b.txt").write_text(docs[0] + "\n\n" + docs[1])  # one document: the whole file
    write_jsonl(folder / "a.jsonl", docs[2:5])
    pq.write_table(pa.table({"text": docs[5:9]}), folder / "sub" / "c.parquet")
    (folder / "notes.md").write_text("ignored")
    expected = docs[2:5] + [docs[0] + "\n\n" + docs[1]] + docs[5:9]
    assert list(iter_documents(str(folder))) == expected
    assert list(iter_documents(str(folder / "a.jsonl"))) == docs[2:5]
    assert list(iter_documents(str(folder / "sub" / "c.parquet"))) == docs[5:9]


def test_text_field_selects_jsonl_field_and_parquet_column(tmp_path: Path):
    docs = random_docs(3)
    jsonl = write_jsonl(tmp_path / "d.jsonl", docs, field="body")
    parquet = tmp_path / "d.parquet"
    pq.write_table(pa.table({"body": docs, "id": [1, 2, 3]}), parquet)
    assert list(iter_documents(str(jsonl), text_field="body")) == docs
    assert list(iter_documents(str(parquet), text_field="body")) == docs
    with pytest.raises(DataError, match=r"d\.jsonl:1 has no text field 'text'.*'body'"):
        list(iter_documents(str(jsonl)))
    with pytest.raises(DataError, match=r"d\.parquet has no column 'text'.*'body'"):
        list(iter_documents(str(parquet)))


def test_hf_dataset_from_a_local_folder(tmp_path: Path, monkeypatch, no_network):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    docs = random_docs(4)
    write_jsonl(tmp_path / "train.jsonl", docs)
    assert list(iter_documents(f"hf:{tmp_path}")) == docs


@pytest.mark.parametrize("spec, error, message", [
    ("builtin:wikipedia", ConfigError, "unknown builtin dataset 'builtin:wikipedia'"),
    ("hf:", ConfigError, "accepted: hf:NAME"),
    ("hf:a:b:c:d", ConfigError, "accepted: hf:NAME"),
    ("no/such/file.txt", DataError, "'no/such/file.txt' is not an existing file or folder"),
])
def test_bad_dataset_specs(spec: str, error: type, message: str):
    with pytest.raises(error, match=message):
        iter_documents(spec)


def test_bad_local_files(tmp_path: Path):
    (tmp_path / "x.csv").write_text("a,b")
    with pytest.raises(DataError, match=r"unsupported suffix '\.csv'"):
        iter_documents(str(tmp_path / "x.csv"))
    with pytest.raises(DataError, match="holds no .txt/.jsonl/.parquet files"):
        iter_documents(str(tmp_path))
    (tmp_path / "bad.jsonl").write_text('{"text": "w1"}\n{oops\n')
    with pytest.raises(DataError, match=r"bad\.jsonl:2 is not valid JSON"):
        list(iter_documents(str(tmp_path / "bad.jsonl")))


# --- windows ----------------------------------------------------------------------------------


def test_windows_pack_documents_with_eos_and_split_by_index(tmp_path: Path, word_tokenizer):
    docs = random_docs(200)
    path = write_jsonl(tmp_path / "d.jsonl", docs)
    ctx = 9
    train = token_windows(word_tokenizer, str(path), context_size=ctx)
    heldout = token_windows(word_tokenizer, str(path), context_size=ctx, split="heldout")
    assert (train[:, 0] == BOS).all() and (heldout[:, 0] == BOS).all()

    stream = [t for doc in docs for t in [*ids_of(doc), EOS]]
    n_total = len(stream) // (ctx - 1)
    assert len(train) + len(heldout) == n_total
    assert len(heldout) == n_total // HELDOUT_EVERY
    # Interleave the two splits back by the fixed rule: together they are the whole stream.
    parts, it_train, it_held = [], iter(train.tolist()), iter(heldout.tolist())
    for k in range(n_total):
        window = next(it_held) if k % HELDOUT_EVERY == HELDOUT_EVERY - 1 else next(it_train)
        parts.extend(window[1:])
    assert parts == stream[:n_total * (ctx - 1)]
    # The text is random, so no held-out window equals a training window.
    assert not {tuple(w) for w in train.tolist()} & {tuple(w) for w in heldout.tolist()}


def test_n_tokens_rounds_up_and_prefix_is_stable(tmp_path: Path, word_tokenizer):
    path = str(write_jsonl(tmp_path / "d.jsonl", random_docs(100)))
    few = token_windows(word_tokenizer, path, context_size=16, n_tokens=100)
    assert few.shape == (7, 16)
    many = token_windows(word_tokenizer, path, context_size=16, n_windows=20)
    assert torch.equal(many[:7], few)


def test_windows_are_read_lazily(tmp_path: Path, word_tokenizer):
    path = tmp_path / "d.jsonl"
    write_jsonl(path, random_docs(2 * corpus._BATCH_DOCS))
    with path.open("a") as f:
        f.write("{broken\n")
    # Documents are tokenized a batch at a time; 3 windows need only the first batch, so the
    # broken line after the second is never read.
    assert token_windows(word_tokenizer, str(path), context_size=8, n_windows=3).shape == (3, 8)
    broken_line = 2 * corpus._BATCH_DOCS + 1
    with pytest.raises(DataError, match=rf"d\.jsonl:{broken_line} is not valid JSON"):
        token_windows(word_tokenizer, str(path), context_size=8)


def test_long_documents_are_tokenized_in_pieces_at_line_breaks(
    tmp_path: Path, word_tokenizer, monkeypatch
):
    lines = random_docs(300, seed=3)
    (tmp_path / "big.txt").write_text("\n".join(lines))
    whole = token_windows(word_tokenizer, str(tmp_path / "big.txt"), context_size=32)
    monkeypatch.setattr(corpus, "_PIECE_CHARS", 500)
    pieces = token_windows(word_tokenizer, str(tmp_path / "big.txt"), context_size=32)
    assert torch.equal(whole, pieces)


def test_not_enough_text_says_how_much_there_is(tmp_path: Path, word_tokenizer):
    path = str(write_jsonl(tmp_path / "d.jsonl", ["w1 w2 w3 w4 w5 w6 w7 w8 w9 w10"] * 10))
    n_train = len(token_windows(word_tokenizer, path, context_size=8))
    with pytest.raises(DataError, match=f"has only {n_train} train windows of 8 tokens"):
        token_windows(word_tokenizer, path, context_size=8, n_windows=n_train + 1)
    with pytest.raises(DataError, match="too little text for one heldout window"):
        token_windows(word_tokenizer, path, context_size=64, split="heldout")


def test_empty_corpus(tmp_path: Path, word_tokenizer):
    (tmp_path / "empty.txt").write_text("  \n\n ")
    with pytest.raises(DataError, match="contains no text"):
        token_windows(word_tokenizer, str(tmp_path / "empty.txt"), n_windows=1)


def test_context_size_and_option_checks(tmp_path: Path, word_tokenizer):
    path = str(write_jsonl(tmp_path / "d.jsonl", random_docs(10)))
    with pytest.raises(ConfigError, match="context size 65 is larger .* 64; accepted: 2 to 64"):
        check_context_size(65, 64)
    check_context_size(64, 64)
    with pytest.raises(ConfigError, match="context size 1 is not accepted"):
        token_windows(word_tokenizer, path, context_size=1)
    with pytest.raises(ConfigError, match="split 'test' is not accepted; accepted: train, heldout"):
        next(iter_windows(word_tokenizer, path, split="test"))
    with pytest.raises(ConfigError, match="n_windows or n_tokens, not both"):
        token_windows(word_tokenizer, path, n_windows=1, n_tokens=5)
    with pytest.raises(ConfigError, match="n_windows must be a positive integer, got 0"):
        token_windows(word_tokenizer, path, n_windows=0)
