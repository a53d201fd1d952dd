"""The feature browser's pages in headless Chromium: every page loads from file:// with no
console errors and no network requests, sorting and search do what they say, the cross-SAE
page shows pairs side by side, and the prompt view, served locally, lists the latents that an
independent encode of the text finds."""

from __future__ import annotations

import contextlib
import json
import shutil
import threading
import urllib.error
import urllib.request

import pytest
import torch
from browse_helpers import SITE, build_tiny_site, read_data, save_sparse_sae

from gated_sae import load_sae
from gated_sae.browse import BrowseOptions, build_site, make_server
from gated_sae.data.lm import load_model

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
try:
    from playwright.sync_api import sync_playwright
except ImportError:  # the test extra installs it
    sync_playwright = None

pytestmark = [
    pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (make chromium)"),
    pytest.mark.skipif(sync_playwright is None, reason="playwright is not installed (test extra)"),
    pytest.mark.usefixtures("single_thread"),
]
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run"]


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield build_tiny_site(tmp_path_factory.mktemp("pages"))
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def browser():
    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        yield chromium
        chromium.close()


class Page:
    """A browser tab that records console errors and warnings, uncaught exceptions and any
    request to a URL outside `allowed`."""

    def __init__(self, browser, allowed=("file://",)):
        self.tab = browser.new_page()
        self.problems: list[str] = []
        self.tab.on("console", lambda m: self.problems.append(f"console {m.type}: {m.text}")
                    if m.type in ("error", "warning") else None)
        self.tab.on("pageerror", lambda e: self.problems.append(f"page error: {e}"))
        self.tab.on("request", lambda r: None if r.url.startswith(allowed)
                    else self.problems.append(f"request {r.url}"))

    def open(self, url: str):
        self.tab.goto(url)
        return self.tab


def texts(tab, selector: str) -> list[str]:
    return tab.locator(selector).all_inner_texts()


def test_pages_load_from_file_without_errors_or_network(built, browser):
    root, _, index = built
    site = root / "site"
    page = Page(browser)
    tab = page.open(index.as_uri())
    tab.wait_for_selector("#pairs li span")
    assert texts(tab, "#saes td:first-child") == ["relu", "topk"]

    tab = page.open(f"{site.as_uri()}/sae.html#s=relu")
    tab.wait_for_selector("#latents tbody tr")
    assert tab.locator("#latents tbody tr").count() == 48
    assert tab.locator("svg.hist rect").count() >= 2

    record = next(r for r in (read_data(site, f"relu/latents/{i}") for i in range(48))
                  if len(r["top"]) == 6)
    tab = page.open(f"{site.as_uri()}/latent.html#s=relu&i={record['i']}")
    tab.wait_for_selector("#top .context")
    labels = texts(tab, "#top .context .val")
    assert labels == [tab.evaluate("x => BROWSE.fmt(x, 4)", c[4][c[1] - c[2]])
                      for c in record["top"]]
    assert tab.locator("#top .context").first.locator(".peak").count() == 1
    assert tab.locator("#random .context").count() == len(record["random"])
    assert tab.locator("#neighbours a").count() == 2 * 8
    tab.locator("a", has_text=f"#{record['i'] + 1} \u2192").click()
    tab.wait_for_function(f"document.title.startsWith('relu #{record['i'] + 1} ')")

    tab = page.open(f"{site.as_uri()}/cross.html#a=relu&b=topk")
    tab.wait_for_selector("#pairs tbody tr")
    assert tab.locator("#pairs tbody tr:not([hidden])").count() == 48
    tab.locator("#pairs button.show").first.click()
    tab.wait_for_selector("#pairs td.detail .panel .context")
    assert tab.locator("#pairs td.detail .panel").count() == 2
    tab.locator("#flip").click()
    assert tab.locator("#pairs thead th").nth(1).inner_text() == "topk"

    tab = page.open(f"{site.as_uri()}/prompt.html")
    tab.wait_for_selector("#needs-server")
    assert page.problems == []


def test_sorting_and_search(built, browser):
    root, _, _ = built
    site = root / "site"
    table, vocab = read_data(site, "relu/index"), read_data(site, "vocab")
    page = Page(browser)
    tab = page.open(f"{site.as_uri()}/sae.html#s=relu")
    tab.wait_for_selector("#latents tbody tr")

    def shown() -> list[int]:
        return [int(t.lstrip("#")) for t in texts(tab, "#latents tbody td:first-child")]

    by_freq = sorted(range(48), key=lambda i: (-table["freq"][i], i))
    assert shown() == by_freq  # the initial order: most frequent first
    header = tab.locator("#latents th", has_text="max activation")
    header.click()
    assert shown() == sorted(range(48), key=lambda i: (-table["max"][i], i))
    header.click()
    assert shown() == sorted(range(48), key=lambda i: (table["max"][i], i))
    tab.locator("#latents th", has_text="top token").click()
    top_text = [vocab.get(str(t), "") if t >= 0 else "" for t in table["top"]]
    assert shown() == sorted(range(48), key=lambda i: (top_text[i], i))

    def matches(query: str) -> list[int]:
        def text(i):
            ids = table["tokens"][i] + table["up"][i]
            return "\0".join(vocab[str(t)] for t in ids) + "\0" + "".join(
                vocab[str(t)] for t in table["snippet"][i])
        return [i for i in range(48) if query in text(i).lower()]

    for query in ("cat", "Mat", "zzz"):
        tab.locator("#search").fill(query)
        expected = matches(query.lower())
        assert sorted(shown()) == expected
        assert tab.locator("#count").inner_text() == f"{len(expected)} of 48 latents"
    assert 0 < len(matches("cat")) < 48
    tab.locator("#search").fill("#7")
    assert shown() == [7]
    assert page.problems == []


@contextlib.contextmanager
def serving(site, lm):
    """The site served on a free port in a thread, until the block ends."""
    server = make_server(site, port=0, lm=lm)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


@pytest.fixture
def server(built):
    root, _, _ = built
    lm = load_model(str(root / "model"))
    with serving(root / "site", lm) as server:
        yield server, lm


def post(url: str, body: bytes) -> tuple[int, dict]:
    request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_prompt_view_lists_the_latents_of_typed_text(built, browser, server):
    root, dirs, _ = built
    http, lm = server
    base = f"http://127.0.0.1:{http.server_address[1]}"
    text = "the cat sat on the mat . a dog ran in the park"
    ids = [lm.bos_token_id, *lm.tokenizer(text, add_special_tokens=False)["input_ids"]]
    sae = load_sae(dirs[0])
    with torch.no_grad():
        f = sae.encode(lm.activations(torch.tensor([ids]), SITE)[0, 1:])
    peak = f.max(0).values
    firing = sorted(range(48), key=lambda i: (-float(peak[i]), i))[:int((peak > 0).sum())]

    page = Page(browser, allowed=("file://", base))
    tab = page.open(f"{base}/prompt.html")
    tab.locator("#text").fill(text)
    tab.locator("#encode").click()
    tab.wait_for_selector("#prompt-latents tr.latent-row")
    assert tab.locator("#strip .tok").count() == len(ids) - 1
    rows = texts(tab, "#prompt-latents tr.latent-row td:first-child")
    listed = [int(t.lstrip("#")) for t in rows]
    assert listed == firing
    tab.locator("#strip .tok").nth(1).click()  # "cat"
    links = tab.locator("#token-latents a")
    expected = int((f[1] > 0).sum())
    assert links.count() == min(expected, 64)
    links.first.click()
    tab.wait_for_selector("#top .context")
    assert tab.url.startswith(f"{base}/latent.html#s=relu&i={int(f[1].argmax())}")
    assert page.problems == []

    assert post(f"{base}/api/encode", b"not json")[0] == 400
    status, body = post(f"{base}/api/encode", json.dumps({"text": "   "}).encode())
    assert status == 400 and "no tokens" in body["error"]
    status, body = post(f"{base}/api/encode", json.dumps({"text": text}).encode())
    assert status == 200 and body["tokens"] == ids[1:]
    assert body["saes"]["relu"][1][0] == [int(f[1].argmax()), pytest.approx(float(f[1].max()))]
    assert post(f"{base}/api/other", b"{}")[0] == 404


def test_prompt_view_leaves_out_the_sites_skipped_positions(built, browser, tmp_path):
    """A site of an SAE trained with skip_positions 2: its index says so, and the prompt view
    shows the text's first token (position 1) greyed and lists no latents on it; the others
    as an independent encode finds them."""
    root, _, _ = built
    sae_dir = save_sparse_sae(tmp_path / "skip2", root / "model", root / "corpus.txt",
                              skip_positions=2)
    site = tmp_path / "site"
    build_site([sae_dir], site, options=BrowseOptions(tokens=100, top=2, random=2),
               progress=False)
    lm = load_model(str(root / "model"))
    text = "the cat sat on the mat"
    ids = [lm.bos_token_id, *lm.tokenizer(text, add_special_tokens=False)["input_ids"]]
    with torch.no_grad():
        f = load_sae(sae_dir).encode(lm.activations(torch.tensor([ids]), SITE)[0, 2:])
    with serving(site, lm) as server:
        base = f"http://127.0.0.1:{server.server_address[1]}"
        status, body = post(f"{base}/api/encode", json.dumps({"text": text}).encode())
        assert status == 200 and body["tokens"] == ids[1:] and body["skipped"] == 1
        latents = body["saes"]["skip2"]
        assert latents[0] == [] and latents[1] and len(latents) == len(ids) - 1
        for listed, row in zip(latents[1:], f, strict=True):
            firing = sorted((row > 0).nonzero().squeeze(1).tolist(), key=lambda i: -row[i])
            assert [i for i, _ in listed] == firing
            assert [a for _, a in listed] == pytest.approx(row[firing].tolist())

        page = Page(browser, allowed=("file://", base))
        tab = page.open(f"{base}/prompt.html")
        tab.locator("#text").fill(text)
        tab.locator("#encode").click()
        tab.wait_for_selector("#strip .tok")
        tokens = tab.locator("#strip .tok")
        assert [tokens.nth(k).get_attribute("class") for k in range(2)] == ["tok muted", "tok"]
        tokens.first.click()
        assert "not encoded" in tab.locator("#token-latents").inner_text()
        tokens.nth(1).click()
        assert tab.locator("#token-latents a").count() == len(latents[1])
        tab = page.open((site / "index.html").as_uri())
        summary = tab.locator("main p").first.inner_text()
        assert "the first 2 positions (BOS first) kept out." in summary
        assert page.problems == []
