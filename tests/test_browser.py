"""The trial inspector seen and used in a real browser: JupyterLab on 127.0.0.1 with a token, headless Chromium
driven by Selenium, the way a person uses ``inspect.ipynb``: run all, pick a study, filter by ``crash``, click a
trial, change the scatter's x axis. Screenshots of each step go to ``$SLOGUARD_SCREENSHOTS`` (the ones in
``docs/screenshots/`` come from this test) or the test's temporary folder.

Needs Chromium and its driver (Debian: ``scripts/install_browser.sh``, which ``make test`` runs) and the ``dev``
extra's selenium and jupyterlab; skipped, saying which is missing, where they are not installed.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sloguard_lib.measure.slo import SLO
from sloguard_lib.measure.workload import Workload
from sloguard_lib.study.runner import StudySpec, run_study

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parent.parent
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")
TOKEN = "sloguard-browser-test"


def _missing() -> str | None:
    if CHROMIUM is None or DRIVER is None:
        return "Chromium and chromedriver are not installed (bash scripts/install_browser.sh)"
    for module in ("selenium", "jupyterlab"):
        try:
            __import__(module)
        except ImportError:
            return f"{module} is not installed (pip install -e '.[dev]')"
    return None


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Any, Path]]:
    if (reason := _missing()) is not None:
        pytest.skip(reason)
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    root = tmp_path_factory.mktemp("lab")
    wl = Workload(concurrency=8, num_requests=16)
    # one study with crashes and SLO misses, one that met its SLO: what a person inspects
    run_study(StudySpec(model="llama-3.1-8b", gpu="l4-24gb", optimizer="random", seed=3, budget=10, slo=SLO(500, 100),
                        workload=wl), root / "results" / "a")
    run_study(StudySpec(model="qwen2-1.5b", gpu="a100-40gb", optimizer="tpe", seed=1, budget=6, slo=SLO(500, 100),
                        workload=wl), root / "results" / "b")
    nb = json.loads((REPO / "sloguard_lib" / "notebooks" / "inspect.ipynb").read_text())
    nb["cells"][1]["source"] = 'results_dir = "results"\n'
    (root / "inspect.ipynb").write_text(json.dumps(nb))
    settings = root / "settings" / "@jupyterlab" / "apputils-extension"
    settings.mkdir(parents=True)
    (settings / "notification.jupyterlab-settings").write_text('{"fetchNews": "false", "checkForUpdates": false}')
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = os.environ | {"JUPYTERLAB_SETTINGS_DIR": str(root / "settings"), "PYTHONPATH": str(REPO)}
    server = subprocess.Popen(
        [sys.executable, "-m", "jupyter", "lab", "--no-browser", f"--port={port}", "--ServerApp.ip=127.0.0.1",
         f"--IdentityProvider.token={TOKEN}", f"--ServerApp.root_dir={root}", "--ServerApp.allow_root=True"],
        stdout=open(root / "lab.log", "w"), stderr=subprocess.STDOUT, env=env, start_new_session=True)  # noqa: SIM115
    options = Options()
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage"):
        options.add_argument(arg)
    options.binary_location = str(CHROMIUM)
    driver = webdriver.Chrome(service=Service(str(DRIVER)), options=options)
    try:
        driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                               {"width": 1280, "height": 800, "deviceScaleFactor": 1, "mobile": False})
        deadline = time.monotonic() + 120
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), 1).close()
                break
            except OSError:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise AssertionError((root / "lab.log").read_text()[-3000:]) from None
                time.sleep(0.5)
        driver.get(f"http://127.0.0.1:{port}/lab/tree/inspect.ipynb?token={TOKEN}")
        yield driver, Path(os.environ.get("SLOGUARD_SCREENSHOTS", root))
    finally:
        driver.quit()
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()


def test_a_person_inspects_the_crashed_trials_of_a_study(lab: tuple[Any, Path]) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait

    driver, shots = lab
    shots.mkdir(parents=True, exist_ok=True)
    wait = WebDriverWait(driver, 120)
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, ".jp-Notebook .jp-Cell"))
    # as a person would: once the kernel says Idle, Run > Run All Cells (a click before the kernel is connected
    # runs nothing: seen on a loaded 2-core machine), again if nothing ran
    wait.until(lambda d: "Idle" in d.find_element(By.CSS_SELECTOR, ".jp-StatusBar-Widget, #jp-main-statusbar").text)
    run_all = "//div[contains(@class,'lm-Menu-itemLabel') and text()='Run All Cells']"

    def rendered(d: Any) -> bool:
        return (len(d.find_elements(By.CSS_SELECTOR, ".widget-dropdown select")) == 4
                and bool(d.find_elements(By.CSS_SELECTOR, ".jp-OutputArea img")))

    for attempt in range(3):
        driver.find_element(By.XPATH, "//div[contains(@class,'lm-MenuBar-itemLabel') and text()='Run']").click()
        wait.until(lambda d: d.find_elements(By.XPATH, run_all))
        driver.find_element(By.XPATH, run_all).click()
        try:
            WebDriverWait(driver, 60).until(rendered)
            break
        except Exception:
            driver.save_screenshot(str(shots / f"inspector_0_run_all_attempt{attempt}.png"))
    assert rendered(driver), "Run All Cells never rendered the inspector"

    def controls() -> tuple[Select, Select, Select, Any]:
        study, status, x, _ = (Select(e) for e in driver.find_elements(By.CSS_SELECTOR, ".widget-dropdown select"))
        trials = Select(driver.find_element(By.CSS_SELECTOR, ".widget-select select"))
        return study, status, x, trials

    def plot_src() -> str:
        return str(driver.find_element(By.CSS_SELECTOR, ".jp-OutputArea img").get_attribute("src"))

    def detail() -> str:
        return str(driver.find_element(By.CSS_SELECTOR, ".widget-html-content").text)

    study, status, _, trials = controls()
    assert [o.text for o in study.options] == ["results/a/llama-3.1-8b_l4-24gb_sim_random_seed3.jsonl",
                                               "results/b/qwen2-1.5b_a100-40gb_sim_tpe_seed1.jsonl"]
    assert len(trials.options) == 10
    driver.save_screenshot(str(shots / "inspector_1_run_all.png"))

    status.select_by_visible_text("crash")
    wait.until(lambda d: len(controls()[3].options) == 3)
    crashed = [o.text for o in controls()[3].options]
    assert all(text.endswith("crash") for text in crashed), crashed
    driver.save_screenshot(str(shots / "inspector_2_crash_filter.png"))

    controls()[3].select_by_index(1)
    second = int(crashed[1].split()[0])
    wait.until(lambda d: detail().startswith(f"trial {second} "))
    text = detail()
    assert "crashed: " in text and '"max_num_seqs":' in text and "message" in text, text
    driver.save_screenshot(str(shots / "inspector_3_crashed_trial.png"))

    before = plot_src()
    controls()[2].select_by_visible_text("max_num_seqs")
    wait.until(lambda d: plot_src() != before)
    img = driver.find_element(By.CSS_SELECTOR, ".jp-OutputArea img")
    driver.execute_script("arguments[0].scrollIntoView({block: 'center'})", img)
    time.sleep(0.5)
    assert img.size["width"] > 300 and img.size["height"] > 200, img.size  # drawn, not a broken image
    driver.save_screenshot(str(shots / "inspector_4_axes.png"))
    assert "Traceback" not in driver.find_element(By.CSS_SELECTOR, ".jp-Notebook").text
