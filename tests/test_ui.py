"""The Dagster UI in a real browser: `dagster dev` on loopback in a temporary DAGSTER_HOME, Debian's Chromium driven
by Playwright. Lineage of the tiny pipeline, one asset materialized from the Launchpad, its metadata read back.
With UPDATE_SCREENSHOTS=1 the README's screenshots (docs/ui-*.png) are regenerated from this run."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

CHROMIUM = "/usr/bin/chromium"
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
# lora is the cheapest tiny asset with a loss-curve plot (it reads a source only); the Launchpad shortens it.
LAUNCHPAD_CONFIG = "ops:\n  tiny__lora:\n    config:\n      step_scheduler:\n        max_steps: 4\n"

pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian's chromium is not installed (.ci/run)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def dagster_ui(fixtures_dir: Path, tmp_path: Path):
    """`dagster dev` serving the code location on a free loopback port; yields its URL."""
    home = tmp_path / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    (tmp_path / "inbox").mkdir()
    env = os.environ | {
        "DAGSTER_HOME": str(home),
        "NEMOTRON_ARTIFACT_ROOT": str(tmp_path / "artifacts"),
        "NEMOTRON_CPT_INBOX": str(tmp_path / "inbox"),
    }
    port = free_port()
    command = [str(Path(sys.executable).parent / "dagster"), "dev", "-w", str(ROOT / "workspace.yaml")]  # = make ui
    log = (tmp_path / "dagster_dev.log").open("w")
    server = subprocess.Popen(
        [*command, "-h", "127.0.0.1", "-p", str(port)],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its webserver, daemon and code servers in one process group
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 180
        while True:
            try:
                urllib.request.urlopen(f"{url}/server_info", timeout=2)
                break
            except OSError:
                assert server.poll() is None and time.time() < deadline, (tmp_path / "dagster_dev.log").read_text()
                time.sleep(1)
        yield url
    finally:
        server.send_signal(signal.SIGINT)  # Ctrl-C, as `make ui` is stopped: dagster dev may not stop on SIGTERM
        with contextlib.suppress(subprocess.TimeoutExpired):  # a shell that started it in the background may
            server.wait(timeout=60)  # have it ignore SIGINT: then it is killed below
        with contextlib.suppress(ProcessLookupError):  # with the code servers it leaves to their heartbeat
            os.killpg(server.pid, signal.SIGKILL)
        server.wait(timeout=30)


@pytest.fixture
def page(tmp_path: Path):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch_persistent_context(
            tmp_path / "chromium",  # a fresh user data dir
            executable_path=CHROMIUM,
            args=FLAGS,
            viewport={"width": 1600, "height": 1400},
        )
        yield browser.new_page()
        browser.close()


def screenshot(page, name: str, tmp_path: Path) -> None:
    """Into the test's directory, and into docs/ when UPDATE_SCREENSHOTS is set."""
    page.screenshot(path=tmp_path / name)
    if os.environ.get("UPDATE_SCREENSHOTS"):
        shutil.copy(tmp_path / name, DOCS / name)


def launch(page, button) -> None:
    """Click a Materialize button and wait for the run's launch mutation to be answered (leaving the page sooner
    cancels it)."""
    with page.expect_response(lambda response: "op=LaunchPipelineExecution" in response.url):
        button.click()


def wait_for_metadata(page, url: str, key: str, timeout: float) -> None:
    """Reload the asset page until its latest materialization shows the metadata key."""
    deadline = time.time() + timeout
    page.goto(url, wait_until="networkidle")
    while page.get_by_text(key).count() == 0:
        assert time.time() < deadline, f"{url} was not materialized within {timeout:.0f} s"
        time.sleep(5)
        page.reload(wait_until="networkidle")


def test_lineage_launchpad_materialization_and_metadata(dagster_ui: str, page, tmp_path: Path):
    page.goto(f"{dagster_ui}/locations/nemotron_assets/asset-groups/tiny", wait_until="networkidle")
    page.add_locator_handler(page.get_by_role("button", name="Skip"), lambda skip: skip.click())  # community dialog
    page.get_by_text("lora", exact=True).first.wait_for(timeout=60_000)
    for name in ("chat_jsonl", "eval_lora", "merged", "cpt"):  # sources, stages and inserted evaluations
        assert page.get_by_text(name, exact=True).count() >= 1, name
    page.get_by_text("Hide navigation").click()
    page.mouse.move(800, 700)
    page.keyboard.down("Control")  # zoom out: node names only, the whole group in view
    for _ in range(2):
        page.mouse.wheel(0, 100)
        page.wait_for_timeout(300)
    page.keyboard.up("Control")
    page.mouse.down()  # and drag it a little down, below the toolbar
    page.mouse.move(800, 760, steps=5)
    page.mouse.up()
    page.get_by_text("packed_parquet", exact=True).first.wait_for()
    screenshot(page, "ui-lineage.png", tmp_path)

    # lora trains on chat_split's train split: materialize that first with a plain click, as a user would
    page.goto(f"{dagster_ui}/assets/tiny/chat_split", wait_until="networkidle")
    launch(page, page.get_by_role("button", name="Materialize").first)
    wait_for_metadata(page, f"{dagster_ui}/assets/tiny/chat_split", "held_out_records", timeout=300)

    page.goto(f"{dagster_ui}/assets/tiny/lora", wait_until="networkidle")
    page.get_by_role("button", name="Materialize").first.click(modifiers=["Shift"])
    editor = page.locator(".CodeMirror").first
    editor.wait_for(timeout=60_000)
    editor.click()
    page.keyboard.press("Control+A")
    page.keyboard.press("Delete")
    page.keyboard.insert_text(LAUNCHPAD_CONFIG)
    launch(page, page.get_by_role("button", name="Materialize").last)

    wait_for_metadata(page, f"{dagster_ui}/assets/tiny/lora", "final_loss", timeout=600)
    steps = page.locator("tr").filter(has=page.get_by_text("steps", exact=True)).first
    assert steps.locator("td").last.inner_text().strip() == "4"  # the Launchpad's max_steps, not the stage's 30
    page.get_by_text("loss_curve").first.scroll_into_view_if_needed()
    page.locator("tr", has_text="loss_curve").first.locator("a").first.click()  # markdown opens in a dialog
    image = page.locator("img[src^='data:image/png;base64']").first
    image.wait_for(state="attached", timeout=30_000)
    image.scroll_into_view_if_needed()
    assert image.evaluate("img => img.naturalWidth") > 100
    screenshot(page, "ui-asset.png", tmp_path)

    lora = tmp_path / "artifacts" / "tiny" / "lora"
    provenance = json.loads((lora / (lora / "CURRENT").read_text() / "provenance.json").read_text())
    assert provenance["params"]["step_scheduler.max_steps"] == 4  # the Launchpad's config, not the stage default
