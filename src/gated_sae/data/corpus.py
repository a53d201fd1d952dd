"""Text corpora and the token windows a language model reads.

A dataset is named by one string:

- ``builtin:python-docs`` (the default): English text every Python ships, so it works offline.
  The documentation topics of ``pydoc_data.topics`` (sorted by topic name), then the
  docstrings of the modules in `STDLIB_MODULES` (sorted), each module followed by its public
  classes and functions (sorted by name) and the public methods and properties of each class.
  Each docstring is one document; a text seen before is skipped. A module that cannot be
  imported on this build of Python (``sqlite3`` without its C library, say) is skipped, so the
  corpus is the same on every machine with the same Python version and build.
- ``builtin:python-source``: the source files of the pure-Python modules in `STDLIB_MODULES`,
  one document per file: code with English comments, about three times the text of the docs.
- a local path: a ``.txt`` file (the whole file is one document), a ``.jsonl`` file (one JSON
  object per line, its ``text_field`` is a document), a ``.parquet`` file (each row's
  ``text_field`` column is a document), or a folder searched recursively for those files,
  read in sorted order of their relative paths.
- ``hf:NAME[:CONFIG[:SPLIT]]``: a Hugging Face dataset read with ``datasets`` in streaming
  mode (SPLIT defaults to ``train``); the only form that may reach the network.

`iter_windows` packs documents into windows: documents are tokenized in order without special
tokens, each followed by EOS, concatenated, and cut into consecutive pieces of
``context_size - 1`` tokens; each window is BOS followed by one piece, so the model always sees
BOS at position 0. The tail shorter than a piece is dropped. Window ``k`` of the stream (counting
from 0) is held out when ``k % HELDOUT_EVERY == HELDOUT_EVERY - 1`` and is a training window
otherwise, so the split is fixed by the corpus alone and evaluation never sees a training window.
"""

from __future__ import annotations

import functools
import itertools
import json
import math
import os
import subprocess
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import ConfigError, DataError, check_positive_int

DEFAULT_DATASET = "builtin:python-docs"
DEFAULT_CONTEXT_SIZE = 128  # tokens per window, BOS included
BUILTIN_CORPORA = ("python-docs", "python-source")
TEXT_SUFFIXES = (".txt", ".jsonl", ".parquet")
SPLITS = ("train", "heldout")
HELDOUT_EVERY = 20
DATASET_FORMS = (
    "builtin:python-docs, builtin:python-source, hf:NAME[:CONFIG[:SPLIT]], "
    "or a .txt/.jsonl/.parquet file or a folder of them"
)

# Standard-library modules that import without side effects on Linux, macOS and Windows: no
# GUI (tkinter, turtle, idlelib), no easter eggs (this, antigravity), nothing deprecated for
# removal (asynchat, cgi, imp, lib2to3, ...) and nothing for one platform only. Sorted.
STDLIB_MODULES: tuple[str, ...] = tuple("""
abc argparse array ast asyncio asyncio.base_events asyncio.events asyncio.futures asyncio.locks
asyncio.queues asyncio.streams asyncio.subprocess asyncio.tasks base64 bdb binascii bisect builtins
bz2 calendar cmath cmd code codecs codeop collections collections.abc colorsys compileall
concurrent.futures concurrent.futures.process concurrent.futures.thread configparser contextlib
contextvars copy copyreg csv ctypes dataclasses datetime decimal difflib dis doctest email
email.charset email.contentmanager email.encoders email.errors email.feedparser email.generator
email.header email.headerregistry email.iterators email.message email.mime.base
email.mime.multipart email.mime.text email.parser email.policy email.utils enum errno faulthandler
filecmp fileinput fnmatch fractions ftplib functools gc getopt getpass gettext glob graphlib gzip
hashlib heapq hmac html html.parser http http.client http.cookiejar http.cookies http.server
imaplib importlib importlib.abc importlib.machinery importlib.metadata importlib.resources
importlib.util inspect io ipaddress itertools json json.decoder json.encoder keyword linecache
locale logging logging.config logging.handlers lzma mailbox marshal math mimetypes mmap
modulefinder multiprocessing multiprocessing.connection multiprocessing.managers
multiprocessing.pool multiprocessing.queues multiprocessing.shared_memory
multiprocessing.synchronize netrc numbers opcode operator optparse os os.path pathlib pdb pickle
pickletools pkgutil platform plistlib poplib pprint profile pstats py_compile pyclbr pydoc queue
quopri random re reprlib rlcompleter runpy sched secrets selectors shelve shlex shutil signal
smtplib socket socketserver sqlite3 ssl stat statistics string stringprep struct subprocess
symtable sys sysconfig tabnanny tarfile tempfile textwrap threading time timeit token tokenize
tomllib trace traceback tracemalloc types typing unicodedata unittest unittest.mock urllib.error
urllib.parse urllib.request urllib.response urllib.robotparser uuid venv warnings wave weakref
wsgiref.handlers wsgiref.headers wsgiref.simple_server wsgiref.util wsgiref.validate xml.dom
xml.dom.minidom xml.dom.pulldom xml.etree.ElementTree xml.sax xml.sax.handler xml.sax.saxutils
xml.sax.xmlreader xmlrpc.client xmlrpc.server zipapp zipfile zipimport zlib zoneinfo
""".split())

# Documents longer than this are tokenized in pieces that end at a line break, so one huge
# file does not have to be tokenized in one call.
_PIECE_CHARS = 1 << 20
_BATCH_CHARS = 1 << 20
_BATCH_DOCS = 256


# --- builtin corpora ----------------------------------------------------------------------

# The builtin corpora are read in a fresh interpreter (`python -I -S`: no site-packages, no
# environment) because packages change the standard library when imported (torch replaces
# inspect.getfile, transformers adds methods to logging.Logger), which would make the text
# depend on what else this process has imported. The script uses the standard library only;
# it prints a JSON list: the documents for "docs", the source file paths for "source".
_EXTRACT_SCRIPT = r'''
import importlib, importlib.util, inspect, json, sys, warnings
warnings.simplefilter("ignore")
mode, names = sys.argv[1], sys.argv[2].split(",")

def docstrings(module):
    yield module.__doc__
    members = vars(module)
    for name in sorted(members):
        obj = members[name]
        if name.startswith("_") or not (inspect.isclass(obj) or inspect.isroutine(obj)):
            continue
        yield obj.__doc__
        if inspect.isclass(obj):
            attrs = vars(obj)
            for attr_name in sorted(attrs):
                attr = attrs[attr_name]
                if isinstance(attr, (staticmethod, classmethod)):
                    attr = attr.__func__
                if not attr_name.startswith("_") and (
                        inspect.isroutine(attr) or inspect.isdatadescriptor(attr)):
                    yield getattr(attr, "__doc__", None)

out, seen = [], set()
if mode == "docs":
    from pydoc_data.topics import topics
    texts = [topics[key] for key in sorted(topics)]
    for name in names:
        try:
            texts.extend(docstrings(importlib.import_module(name)))
        except ImportError:  # a module this build of Python lacks
            pass
    for text in texts:
        if isinstance(text, str):
            text = inspect.cleandoc(text).strip()
            if text and text not in seen:
                seen.add(text)
                out.append(text)
else:
    for name in names:
        try:
            spec = importlib.util.find_spec(name)
        except ImportError:
            continue
        origin = spec.origin if spec is not None else None
        if origin and origin.endswith(".py") and origin not in seen:
            seen.add(origin)
            out.append(origin)
json.dump(out, sys.stdout)
'''


@functools.lru_cache(maxsize=2)
def _extract(mode: str) -> tuple[str, ...]:
    args = [mode, ",".join(STDLIB_MODULES)]
    try:
        result = subprocess.run(
            [sys.executable, "-I", "-S", "-c", _EXTRACT_SCRIPT, *args],
            capture_output=True, text=True, encoding="utf-8", check=True, timeout=300,
        )
        return tuple(json.loads(result.stdout))
    except subprocess.CalledProcessError as e:
        lines = (e.stderr or "").strip().splitlines() or [f"exit status {e.returncode}"]
        reason = lines[-1]
    except (OSError, subprocess.SubprocessError, ValueError) as e:
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
    raise DataError(f"cannot read the builtin corpus with {sys.executable!r}: {reason}")


def python_docs_documents() -> Iterator[str]:
    """Documents of ``builtin:python-docs``: pydoc topics, then stdlib docstrings, deduplicated."""
    return iter(_extract("docs"))


def python_source_documents() -> Iterator[str]:
    """Documents of ``builtin:python-source``: each pure-Python stdlib module's source file."""
    for origin in _extract("source"):
        text = Path(origin).read_text(encoding="utf-8").strip()
        if text:
            yield text


# --- dataset specs and documents ----------------------------------------------------------


def _local_files(path: Path) -> list[Path]:
    if path.is_dir():
        files = sorted(
            (p for p in path.rglob("*") if p.is_file() and p.suffix in TEXT_SUFFIXES),
            key=lambda p: p.relative_to(path).as_posix(),
        )
        if not files:
            raise DataError(
                f"dataset folder {path} holds no {'/'.join(TEXT_SUFFIXES)} files; "
                f"accepted: {DATASET_FORMS}"
            )
        return files
    if path.is_file():
        if path.suffix not in TEXT_SUFFIXES:
            raise DataError(
                f"dataset file {path} has an unsupported suffix {path.suffix!r}; "
                f"accepted: {DATASET_FORMS}"
            )
        return [path]
    raise DataError(f"dataset {str(path)!r} is not an existing file or folder; "
                    f"accepted: {DATASET_FORMS}")


def _parse_hf(dataset: str) -> tuple[str, str | None, str]:
    parts = dataset[len("hf:"):].split(":")
    if not parts[0] or len(parts) > 3 or any(not p for p in parts[1:]):
        raise ConfigError(f"dataset {dataset!r} is malformed; accepted: hf:NAME[:CONFIG[:SPLIT]]")
    name = parts[0]
    config = parts[1] if len(parts) > 1 else None
    split = parts[2] if len(parts) > 2 else "train"
    return name, config, split


def check_dataset(dataset: str) -> None:
    """Raise ConfigError/DataError if `dataset` is not a valid spec or names missing files.

    Cheap: reads no text, so a command can validate before it creates any output.
    """
    if not isinstance(dataset, str) or not dataset:
        raise ConfigError(f"dataset {dataset!r} is not accepted; accepted: {DATASET_FORMS}")
    if dataset.startswith("builtin:"):
        if dataset[len("builtin:"):] not in BUILTIN_CORPORA:
            raise ConfigError(f"unknown builtin dataset {dataset!r}; accepted: "
                              + ", ".join(f"builtin:{b}" for b in BUILTIN_CORPORA))
    elif dataset.startswith("hf:"):
        _parse_hf(dataset)
    else:
        _local_files(Path(dataset))


def _jsonl_documents(path: Path, text_field: str) -> Iterator[str]:
    with path.open(encoding="utf-8") as f:
        for line_no, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{path}:{line_no} is not valid JSON ({e.msg})") from None
            if not isinstance(record, dict) or text_field not in record:
                keys = sorted(record) if isinstance(record, dict) else type(record).__name__
                raise DataError(f"{path}:{line_no} has no text field {text_field!r}; "
                                f"it has {keys}; choose one with text_field")
            text = record[text_field]
            if text is not None and not isinstance(text, str):
                raise DataError(f"{path}:{line_no} field {text_field!r} is "
                                f"{type(text).__name__}, expected a string")
            if text:
                yield text


def _parquet_documents(path: Path, text_field: str) -> Iterator[str]:
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(path)
    except Exception as e:  # pyarrow raises several types for an unreadable file
        raise DataError(f"cannot read parquet file {path}: {str(e).splitlines()[0]}") from None
    columns = parquet.schema_arrow.names
    if text_field not in columns:
        raise DataError(f"parquet file {path} has no column {text_field!r}; it has {columns}; "
                        "choose one with text_field")
    for batch in parquet.iter_batches(columns=[text_field], batch_size=1024):
        for text in batch.column(0).to_pylist():
            if text is not None and not isinstance(text, str):
                raise DataError(f"parquet file {path} column {text_field!r} holds "
                                f"{type(text).__name__}, expected strings")
            if text:
                yield text


def _local_documents(path: Path, text_field: str) -> Iterator[str]:
    for file in _local_files(path):
        if file.suffix == ".txt":
            text = file.read_text(encoding="utf-8", errors="replace")
            if text.strip():
                yield text
        elif file.suffix == ".jsonl":
            yield from _jsonl_documents(file, text_field)
        else:
            yield from _parquet_documents(file, text_field)


def _hf_documents(dataset: str, text_field: str) -> Iterator[str]:
    name, config, split = _parse_hf(dataset)
    try:
        import datasets
    except ImportError:
        raise ConfigError(f"dataset {dataset!r} needs the 'datasets' package: "
                          "pip install 'gated-sae[datasets]'") from None
    try:
        # Streaming opens lazily: hub, network and format errors may surface while reading.
        for row in datasets.load_dataset(name, config, split=split, streaming=True):
            if text_field not in row:
                raise DataError(f"dataset {dataset!r} has no field {text_field!r}; it has "
                                f"{sorted(row)}; choose one with text_field")
            text = row[text_field]
            if isinstance(text, str) and text:
                yield text
    except DataError:
        raise
    except Exception as e:  # any failure of the datasets library means "cannot read it"
        message = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise DataError(f"cannot read dataset {dataset!r}: {message}") from None


def iter_documents(dataset: str = DEFAULT_DATASET, *, text_field: str = "text") -> Iterator[str]:
    """The documents of `dataset` (see the module docstring for the accepted forms), in order."""
    check_dataset(dataset)
    if dataset == "builtin:python-docs":
        return python_docs_documents()
    if dataset == "builtin:python-source":
        return python_source_documents()
    if dataset.startswith("hf:"):
        return _hf_documents(dataset, text_field)
    return _local_documents(Path(dataset), text_field)


# --- windows ------------------------------------------------------------------------------


def check_context_size(context_size: int, n_ctx: int | None = None) -> None:
    """Raise ConfigError unless 2 <= context_size <= n_ctx (the model's context length)."""
    upper = "n_ctx" if n_ctx is None else str(n_ctx)
    if isinstance(context_size, bool) or not isinstance(context_size, int) or context_size < 2:
        raise ConfigError(f"context size {context_size!r} is not accepted: a window is BOS plus "
                          f"at least one token; accepted: an integer from 2 to {upper}")
    if n_ctx is not None and context_size > n_ctx:
        raise ConfigError(f"context size {context_size} is larger than the model's context "
                          f"length {n_ctx}; accepted: 2 to {n_ctx}")


def check_skip_positions(skip_positions: int, context_size: int) -> None:
    """Raise ConfigError unless 0 <= skip_positions <= context_size − 2: the leading positions
    of a window kept out of SAE training and metrics leave a token and its prediction."""
    if (isinstance(skip_positions, bool) or not isinstance(skip_positions, int)
            or not 0 <= skip_positions <= context_size - 2):
        raise ConfigError(f"skip_positions {skip_positions!r} is not accepted for windows of "
                          f"{context_size} tokens; accepted: an integer from 0 to "
                          f"{context_size - 2}")


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ConfigError(f"split {split!r} is not accepted; accepted: {', '.join(SPLITS)}")


def special_token_ids(tokenizer: Any, bos_token_id: int | None = None) -> tuple[int, int]:
    """(BOS, EOS) ids: each falls back to the other when the tokenizer defines only one."""
    bos = bos_token_id if bos_token_id is not None else tokenizer.bos_token_id
    eos = tokenizer.eos_token_id
    if bos is None:
        bos = eos
    if eos is None:
        eos = bos
    if bos is None:
        name = getattr(tokenizer, "name_or_path", type(tokenizer).__name__)
        raise ConfigError(f"tokenizer {name!r} has neither a BOS nor an EOS token; "
                          "pass bos_token_id")
    return int(bos), int(eos)


def _pieces(text: str) -> Iterator[str]:
    """`text` in pieces of about _PIECE_CHARS that end at a line break where there is one."""
    start = 0
    while len(text) - start > _PIECE_CHARS:
        cut = text.rfind("\n", start + _PIECE_CHARS // 2, start + _PIECE_CHARS)
        cut = start + _PIECE_CHARS if cut < 0 else cut + 1
        yield text[start:cut]
        start = cut
    yield text[start:]


def _encode(tokenizer: Any, texts: list[str]) -> list[list[int]]:
    return tokenizer(texts, add_special_tokens=False, verbose=False)["input_ids"]


def iter_tokens(tokenizer: Any, documents: Iterable[str], eos_token_id: int) -> Iterator[list[int]]:
    """Token ids of each document followed by EOS, tokenized in batches (pieces of one
    document are yielded in order with EOS after the last piece only)."""
    batch: list[str] = []
    ends: list[bool] = []  # whether batch[i] is the last piece of its document
    chars = 0

    def flush() -> Iterator[list[int]]:
        for ids, last in zip(_encode(tokenizer, batch), ends, strict=True):
            yield [*ids, eos_token_id] if last else list(ids)
        batch.clear()
        ends.clear()

    for doc in documents:
        pieces = list(_pieces(doc))
        for i, piece in enumerate(pieces):
            batch.append(piece)
            ends.append(i == len(pieces) - 1)
            chars += len(piece)
            if len(batch) >= _BATCH_DOCS or chars >= _BATCH_CHARS:
                yield from flush()
                chars = 0
    if batch:
        yield from flush()


def iter_windows(
    tokenizer: Any,
    dataset: str = DEFAULT_DATASET,
    *,
    context_size: int = DEFAULT_CONTEXT_SIZE,
    text_field: str = "text",
    split: str = "train",
    bos_token_id: int | None = None,
) -> Iterator[list[int]]:
    """Windows of `split`, lazily: BOS then ``context_size - 1`` corpus tokens each.

    Raises DataError when the corpus holds no tokens at all.
    """
    check_context_size(context_size)
    _check_split(split)
    bos, eos = special_token_ids(tokenizer, bos_token_id)
    documents = iter_documents(dataset, text_field=text_field)
    return _windows(tokenizer, documents, dataset, context_size, split, bos, eos)


def _windows(
    tokenizer: Any, documents: Iterator[str], dataset: str, context_size: int, split: str,
    bos: int, eos: int,
) -> Iterator[list[int]]:
    piece = context_size - 1
    want_heldout = split == "heldout"
    buf: list[int] = []
    index = 0
    seen_text = False
    for ids in iter_tokens(tokenizer, documents, eos):
        seen_text = seen_text or len(ids) > 1
        buf.extend(ids)
        pos = 0
        while len(buf) - pos >= piece:
            heldout = index % HELDOUT_EVERY == HELDOUT_EVERY - 1
            if heldout == want_heldout:
                yield [bos, *buf[pos:pos + piece]]
            index += 1
            pos += piece
        del buf[:pos]
    if not seen_text:
        raise DataError(f"dataset {dataset!r} contains no text: it tokenizes to no tokens")


def windows_for_tokens(n_tokens: int, context_size: int) -> int:
    """How many windows of `context_size` cover `n_tokens` tokens (rounded up)."""
    return math.ceil(n_tokens / context_size)


def token_windows(
    tokenizer: Any,
    dataset: str = DEFAULT_DATASET,
    *,
    context_size: int = DEFAULT_CONTEXT_SIZE,
    n_windows: int | None = None,
    n_tokens: int | None = None,
    text_field: str = "text",
    split: str = "train",
    bos_token_id: int | None = None,
) -> torch.Tensor:
    """LongTensor [n, context_size] of `split` windows (see the module docstring).

    Give `n_windows`, or `n_tokens` for ``ceil(n_tokens / context_size)`` windows, or neither
    for every window of the split. Only as much text is tokenized as the request needs.
    """
    if n_windows is not None and n_tokens is not None:
        raise ConfigError("give n_windows or n_tokens, not both")
    if n_tokens is not None:
        n_windows = windows_for_tokens(check_positive_int("n_tokens", n_tokens), context_size)
    if n_windows is not None:
        check_positive_int("n_windows", n_windows)
    stream = iter_windows(tokenizer, dataset, context_size=context_size, text_field=text_field,
                          split=split, bos_token_id=bos_token_id)
    rows = list(itertools.islice(stream, n_windows))
    if n_windows is not None and len(rows) < n_windows:
        raise DataError(
            f"dataset {dataset!r} has only {len(rows)} {split} windows of {context_size} tokens "
            f"({len(rows) * context_size} tokens); asked for {n_windows} "
            f"({n_windows * context_size} tokens)"
        )
    if not rows:
        raise DataError(f"dataset {dataset!r} has too little text for one {split} window of "
                        f"{context_size} tokens")
    return torch.from_numpy(np.asarray(rows, dtype=np.int64).reshape(len(rows), context_size))


def describe_dataset(dataset: str) -> str:
    """A short, stable label for a dataset spec, as recorded in manifests."""
    if dataset.startswith(("builtin:", "hf:")):
        return dataset
    return os.path.abspath(dataset)
