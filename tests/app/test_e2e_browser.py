"""End to end: `refinery app` in a subprocess, driven by a real headless Chromium through Playwright.

Set REFINERY_UPDATE_SCREENSHOT=1 to also refresh docs/app.png (shown in the README)."""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from app_helpers import make_checkpoint

REPO = Path(__file__).resolve().parents[2]
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_http(url: str, proc: subprocess.Popen, log: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"refinery app exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.3)
    pytest.fail(f"refinery app did not answer on {url} within {timeout}s:\n{log.read_text()[-3000:]}")


@pytest.fixture
def app_server(tmp_path):
    """The app on a free loopback port, serving the shipped embedded model or a tiny one made here."""
    from refinery.core.checkpoint import EMBEDDED

    t0 = time.monotonic()
    if (EMBEDDED["embedded"] / "config.json").is_file():
        model = "embedded"
    else:
        model = str(make_checkpoint(tmp_path / "ckpt"))
    t0 = time.monotonic()
    port, log = _free_port(), tmp_path / "app.log"
    env = dict(os.environ, GRADIO_ANALYTICS_ENABLED="False", PYTHONUNBUFFERED="1")
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "refinery", "app", "--model", model, "--port", str(port)],
                                cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        url = f"http://127.0.0.1:{port}/"
        _wait_http(url, proc, log)
        print(f"server up after {time.monotonic() - t0:.1f}s")
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()


@pytest.mark.browser
@pytest.mark.timeout(180)
def test_decode_in_a_real_browser(app_server, chromium, tmp_path):
    from playwright.sync_api import expect, sync_playwright

    t0 = time.monotonic()

    from refinery.strategies import available_strategies

    with sync_playwright() as p:
        ctx = p.chromium.launch_persistent_context(
            str(tmp_path / "profile"), executable_path=str(chromium), headless=True, args=CHROMIUM_ARGS,
            viewport={"width": 1400, "height": 1050})
        try:
            page = ctx.new_page()
            page.goto(app_server)
            # The README's row: arith test example 0, where mask-only decoding at 1/8 writes "24 + 24 = 35".
            page.get_by_label("Prompt source").click()
            page.get_by_role("option", name="arith", exact=True).click()
            page.get_by_role("button", name="Draw example").click()
            expect(page.locator("#rf-prompt textarea")).not_to_have_value("", timeout=20_000)
            page.get_by_label("Budget (passes per token)").fill("1/8")
            page.get_by_label("Generation length").fill("48")
            for name in available_strategies():  # mask-only, plus ME-DLM edits when registered
                page.get_by_label(name, exact=True).set_checked(name in ("masked", "edit"))
            page.locator("#rf-run").click()
            print(f"page ready after {time.monotonic() - t0:.1f}s")
            expect(page.locator("#rf-status")).to_contain_text("Done.", timeout=45_000)

            board = page.locator("#rf-board")
            first = board.locator(".rf-col", has=page.locator(".rf-head", has_text="masked"))
            expect(first).to_have_count(1)
            expect(first.locator(".rf-final")).to_have_text(re.compile(r"\S"))  # retried until rendered
            meta = first.locator(".rf-meta").first
            total = int(meta.inner_text().split("pass ")[1].split("/")[1].split(" ")[0])

            # Move the slider (its number box) back to pass 2: masks and that pass's unmasked tokens show.
            number = page.locator("#rf-step input[type=number]")
            number.fill("2")
            number.press("Enter")
            expect(meta).to_contain_text(f"pass 2/{total}")
            unmasked = first.locator(".ev-unmasked").first
            expect(unmasked).to_be_visible()
            assert unmasked.evaluate("e => getComputedStyle(e).backgroundColor") == "rgb(187, 247, 208)"
            assert first.locator(".tok-mask").count() > 0
            page.locator("#rf-play").click()  # play advances the passes on its own
            expect(meta).not_to_contain_text("pass 2/", timeout=10_000)

            page.get_by_role("button", name="Pause").click()
            print(f"checks done after {time.monotonic() - t0:.1f}s")

            # For the picture: the first pass where ME-DLM (when registered) edits its draft, shown as a diff.
            edit = board.locator(".rf-col", has=page.locator(".rf-head", has_text="edit"))
            pick = total
            if edit.count():
                edit_meta = edit.locator(".rf-meta").first
                for k in range(1, total + 1):
                    number.fill(str(k))
                    number.press("Enter")
                    expect(edit_meta).to_contain_text(f"pass {k}/")
                    if "phase edit" in edit_meta.inner_text():
                        pick = k
                        break
            if pick == total:  # no edit column (or it never edited): the last pass, as before
                number.fill(str(total))
                number.press("Enter")
                expect(meta).to_contain_text(f"pass {total}/{total}")
            page.evaluate("window.scrollTo(0, 0)")
            shot = tmp_path / "app.png"
            page.screenshot(path=str(shot))
            assert shot.stat().st_size > 10_000
            if os.environ.get("REFINERY_UPDATE_SCREENSHOT") == "1":
                (REPO / "docs").mkdir(exist_ok=True)
                shutil.copyfile(shot, REPO / "docs" / "app.png")
        finally:
            ctx.close()
