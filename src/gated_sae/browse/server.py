"""`gated-sae browse --serve`: the site over HTTP on 127.0.0.1, plus the prompt view's one
endpoint, `POST /api/encode {"text": ...}`, which runs the model and the site's SAEs on the
text and answers, token by token, which latents fire and how strongly.

The standard library's threading HTTP server; model calls are serialised by a lock.
"""

from __future__ import annotations

import json
import threading
from http import HTTPStatus
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import torch

from ..data.corpus import special_token_ids
from ..data.lm import LanguageModel, load_model
from ..errors import DataError, GatedSAEError
from ..saes import SAE, load_sae
from .build import read_manifest

MAX_BODY = 1 << 20  # bytes of a request body
PER_TOKEN = 64  # latents listed per token, strongest first


class PromptEncoder:
    """Text → `{"tokens", "text", "truncated", "skipped", "saes": {name: per token
    [[latent, act]…]}}`: BOS then the text's tokens, cut to the site's context size, as in the
    site's windows. The text's first `skipped` tokens sit at positions the site leaves out
    (its skip_positions past BOS): they are shown, but no latents are listed on them."""

    def __init__(self, lm: LanguageModel, saes: dict[str, SAE], site: str, context_size: int,
                 skip_positions: int = 1):
        self.lm, self.saes, self.site, self.context_size = lm, saes, site, context_size
        self.first = max(skip_positions, 1)  # the first position encoded; BOS is never shown
        self.bos = special_token_ids(lm.tokenizer, lm.bos_token_id)[0]

    @torch.inference_mode()
    def encode(self, text: str) -> dict:
        ids = self.lm.tokenizer(text, add_special_tokens=False)["input_ids"]
        if not ids:
            raise DataError("the text has no tokens; type some text")
        window = [self.bos, *ids][: self.context_size]
        acts = self.lm.activations(torch.tensor([window]), self.site)[0, self.first:]
        skipped = min(self.first, len(window)) - 1
        result = {
            "tokens": window[1:],
            "text": self.lm.tokenizer.batch_decode([[t] for t in window[1:]],
                                                   clean_up_tokenization_spaces=False),
            "truncated": len(ids) + 1 > self.context_size,
            "skipped": skipped,
            "saes": {},
        }
        for name, sae in self.saes.items():
            f = sae.encode(acts.to(sae.W_dec.device, sae.W_dec.dtype)).float().cpu()
            values, latents = f.topk(min(PER_TOKEN, sae.d_sae), dim=1)
            result["saes"][name] = [[] for _ in range(skipped)] + [
                [[i, v] for i, v in zip(row_ids, row_values, strict=True) if v > 0]
                for row_ids, row_values in zip(latents.tolist(), values.tolist(), strict=True)
            ]
        return result


def _handler(site_dir: Path, encoder: PromptEncoder, lock: threading.Lock):
    class Handler(SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, directory=str(site_dir), **kwargs)

        def do_POST(self) -> None:  # noqa: N802 (the http.server name)
            if self.path != "/api/encode":
                self._json(HTTPStatus.NOT_FOUND, {"error": f"no endpoint {self.path}; "
                                                           "accepted: POST /api/encode"})
                return
            length = int(self.headers.get("Content-Length") or 0)
            if length > MAX_BODY:
                self._json(HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                           {"error": f"request of {length} bytes; at most {MAX_BODY}"})
                return
            try:
                body = json.loads(self.rfile.read(length) or b"null")
                text = body.get("text") if isinstance(body, dict) else None
                if not isinstance(text, str):
                    raise DataError('send JSON {"text": "..."}')
                with lock:
                    result = encoder.encode(text)
            except (ValueError, GatedSAEError) as e:
                self._json(HTTPStatus.BAD_REQUEST, {"error": str(e)})
                return
            self._json(HTTPStatus.OK, result)

        def _json(self, status: HTTPStatus, data: dict) -> None:
            payload = json.dumps(data).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, format, *args) -> None:  # quiet: no line per request
            pass

    return Handler


def make_server(site_dir: str | Path, *, port: int = 8000, device: str = "cpu",
                model_dtype: str | None = None,
                lm: LanguageModel | None = None) -> ThreadingHTTPServer:
    """A server (not yet serving) for the site in `site_dir`, on 127.0.0.1:`port` (0: any
    free port), with the model and SAEs the site was built from. Pass `lm` to reuse one."""
    site_dir = Path(site_dir)
    manifest = read_manifest(site_dir)
    saes = {s["name"]: load_sae(s["path"], device=device) for s in manifest["saes"]}
    lm = lm or load_model(manifest["model"], device=device, dtype=model_dtype)
    encoder = PromptEncoder(lm, saes, manifest["site"], manifest["context_size"],
                            manifest.get("skip_positions", 1))  # not recorded before: BOS
    try:
        return ThreadingHTTPServer(("127.0.0.1", port),
                                   _handler(site_dir, encoder, threading.Lock()))
    except OSError as e:
        raise DataError(f"cannot listen on 127.0.0.1:{port}: {e.strerror}; "
                        "give another --port") from None
