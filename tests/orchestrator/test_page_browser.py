"""The status page as a person sees it: Debian's chromium, headless, driven by selenium,
loads `orchestrator serve`'s page while a real daemon trains a real (tiny) chain.

The chain has a real tokenizer, so that evaluations complete a prompt and the page has
samples to show, and a sensor file, so that it has a GPU temperature to draw. The worker
is held in the second part: the page must show one part of three done and that part
running; released, it must count on to three and draw the curves; stopped, the page must
say so and keep working. Skipped where chromium or its driver is not installed (CI need
not have them): apt-get install -y chromium chromium-driver.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from runtime.faults import release
from tests.helpers import REPO, cli, env, holding, start_daemon, wait_for, wait_held

CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not (CHROMIUM.exists() and CHROMEDRIVER.exists()),
        reason="the status page's browser test needs Debian's chromium and its driver "
        "(apt-get install -y chromium chromium-driver): /usr/bin/chromium or /usr/bin/chromedriver is absent",
    ),
]
CORPUS = REPO / "orchestrator" / "demo_corpus" / "en-jargon-file-excerpt.txt.gz"
PROMPT = "A hacker"
# where a run can leave its screenshot for people (the README's is made so)
SCREENSHOT_ENV = "ORCHESTRATOR_PAGE_SCREENSHOT"


def make_chain(root: Path) -> Path:
    tok = root / "tok" / "t.model"
    out = cli("tokenizer", "train", "-i", str(CORPUS), "--vocab-size", "512", "--out", str(tok), "-q")
    assert out.returncode == 0, out.stderr
    data = root / "data" / "jargon"
    out = cli(
        "prepare",
        "-i",
        str(CORPUS),
        "--tokenizer",
        str(tok),
        "--out",
        str(data),
        "--part-tokens",
        "6000",
        "--block-size",
        "32",
        "--val-fraction",
        "0.05",
        "-q",
    )
    assert out.returncode == 0, out.stderr
    (root / "sensors.json").write_text(json.dumps({"gpu_temp_c": 61.0, "gpu_power_w": 48.0}))
    schedule = {
        "name": "page",
        "tokenizer": "tok/t.model",
        "model": {"block_size": 32, "n_layer": 1, "n_head": 2, "n_embd": 32},
        "train": {
            "micro_batch": 8,
            "grad_accum": 1,
            "lr": 3e-3,
            "warmup_tokens": 2000,
            "cpu_threads": 1,
            "heartbeat_interval_s": 0.2,
        },
        # a sensor file that is never rewritten: it must not count as a failed sensor while the test runs
        "guard": {"sensor_file": "sensors.json", "sensor_stale_s": 86400, "poll_interval_s": 0.5},
        "eval": {"every_parts": 1, "windows": 8, "prompts": [PROMPT], "max_tokens": 8},
        "stages": [{"name": "jargon", "parts": [f"data/jargon/part-00{i}.bin" for i in range(3)]}],
    }
    (root / "schedule.json").write_text(json.dumps(schedule, indent=2))
    return root / "schedule.json"


def start_serve(run: Path, log: Path) -> tuple[subprocess.Popen, str]:
    with open(log, "ab") as f:
        proc = subprocess.Popen(
            [sys.executable, "-m", "orchestrator", "serve", "--run-dir", str(run), "--port", "0"],
            stdout=f,
            stderr=subprocess.STDOUT,
            env=env(),
            cwd=REPO,
        )
    text = wait_for(lambda: "serving" in log.read_text() and log.read_text(), timeout=60, what="serve to listen")
    return proc, text.split(" at ", 1)[1].split()[0]


def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,1700"):
        options.add_argument(arg)
    return webdriver.Chrome(options=options, service=Service(executable_path=str(CHROMEDRIVER)))


def test_the_page_follows_a_running_chain_and_a_stopped_one(tmp_path):
    pytest.importorskip("selenium", reason="selenium (the test extra) drives the browser")
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    schedule = make_chain(tmp_path)
    run = tmp_path / "runs" / "page"
    holds = tmp_path / "holds"
    daemon = start_daemon(schedule, tmp_path / "daemon.log", extra_env=holding(holds, "jargon/part-001:step@3"))
    held = wait_held(holds, "jargon/part-001:step@3")
    serve, url = start_serve(run, tmp_path / "serve.log")
    driver = browser()
    try:
        text = lambda element_id: driver.find_element(By.ID, element_id).text  # noqa: E731
        wait = WebDriverWait(driver, 300, poll_frequency=0.2)  # a ceiling: the conditions end it
        driver.get(url)
        # held in the second part: one of three done, the second under way
        wait.until(lambda d: text("parts-done") == "1 / 3" and "jargon/part-001" in text("current-id"))
        assert text("daemon-state") == "running" and text("chain-name") == "page"
        assert "step 3/" in text("current-detail")
        wait.until(lambda d: PROMPT in text("samples"))  # part-000's evaluation completed the prompt
        release(held)
        # the counter moves on by itself, to the chain's end
        wait.until(lambda d: text("parts-done") == "3 / 3" and text("daemon-state") == "idle")
        wait.until(lambda d: "chain-done" in text("events"))
        svg = lambda chart, shape: len(driver.find_elements(By.CSS_SELECTOR, f"#{chart} svg {shape}"))  # noqa: E731
        wait.until(lambda d: svg("chart-val", "circle") >= 3)  # an evaluation after each part
        assert svg("chart-loss", "path") == 2 and svg("chart-loss", "line.boundary") == 2
        assert svg("chart-lr", "path") >= 1 and svg("chart-speed", "path") == 1
        assert svg("chart-temp", "path") + svg("chart-temp", "circle") >= 1  # the sensor file's 61 °C
        assert "GPU 61 °C" in text("hardware")
        rows = driver.find_elements(By.CSS_SELECTOR, "#parts tbody tr")
        assert [r.text.split()[:2] for r in rows] == [[f"jargon/part-00{i}", "done"] for i in range(3)]
        # everything the page loaded came from the server itself (no CDN: the machine may be offline)
        origins = driver.execute_script("return performance.getEntriesByType('resource').map(r => r.name)")
        assert origins and all(o.startswith(url) for o in origins), origins
        shot = tmp_path / "page.png"
        driver.save_screenshot(str(shot))
        assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 20_000
        if os.environ.get(SCREENSHOT_ENV):
            shutil.copy(shot, os.environ[SCREENSHOT_ENV])

        # the daemon stops: the page says so, and goes on showing the chain as it was left
        daemon.send_signal(signal.SIGTERM)
        assert daemon.wait(timeout=120) == 0
        wait.until(lambda d: text("daemon-state") == "stopped" and "no daemon is running" in text("banners"))
        driver.refresh()
        wait.until(lambda d: text("parts-done") == "3 / 3" and PROMPT in text("samples"))
        assert not [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]  # no script errors
    finally:
        driver.quit()
        serve.terminate()
        serve.wait(timeout=30)
