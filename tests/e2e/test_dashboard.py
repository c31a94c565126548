"""The Ray dashboard as a user sees it while an MoE job runs: headless Chromium (Debian's chromium
and chromedriver, through selenium) signs in with the fleet's token the way a person does, then
the Jobs view must list the job and the Actors view the controller. Also the job's own gauges at
Prometheus and the CLI's job views. Screenshots go to the test's tmp folder and
/tmp/rayfleet-screenshots/ for a person to look at."""
from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any, Iterator

import psutil
import pytest
from selenium import webdriver
from selenium.common.exceptions import WebDriverException
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import WebDriverWait

from rayfleet.cluster.head.processes import Owned, descendants, stop_tree
from tests.support.fleet import Fleet, lines_at_80_columns, running_fleet
from tests.support.fleet_jobs import jobs, submit
from tests.support.prometheus import export_ports, scrape, value
from tests.support.specs import h100_pool, job_spec
from tests.conftest import wait_until

pytestmark = pytest.mark.ray

JOB = "dash-moe"
POOLS = [h100_pool(cpus_per_node=2, memory="4Gi", min_nodes=1, max_nodes=2, nodes=1)]
CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--window-size=1600,1000")
SCREENSHOTS = Path("/tmp/rayfleet-screenshots")
RUN = time.strftime("%Y%m%d-%H%M%S")  # one folder per test session under SCREENSHOTS
RENDER_WAIT_S = 90
"""The dashboard is a React app that polls its APIs every few seconds; on this loaded 2-core
machine the first render of a view took 1-10 s."""


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    yield from running_fleet(tmp_path_factory.mktemp("dashboard"), "t-dash", POOLS)


@pytest.fixture(scope="module")
def job(fleet: Fleet) -> Iterator[dict[str, Any]]:
    """A tiny_moe job with experts sharded over 2 workers, long enough to be running throughout;
    stopped at the end."""
    spec = job_spec(JOB, workers=2, resources={"cpus": 1}, parallelism={"strategy": "moe", "expert_parallel": 2},
                    model={"preset": "tiny_moe"}, data={"seq_len": 64, "global_batch": 4},
                    optimizer={"warmup_steps": 2}, steps=5000, checkpoint={"every": 1000})
    submit(fleet, spec, timeout=120)
    try:
        yield wait_until(lambda: (row := jobs(fleet).get(JOB)) and row["status"] == "RUNNING"
                         and (row["step"] or 0) >= 3 and row, 300, f"{JOB} running past step 3")
    finally:
        fleet.cli("stop", JOB, timeout=120)


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[WebDriver]:
    options = Options()
    options.binary_location = CHROMIUM
    for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'chromium-profile'}"):
        options.add_argument(flag)
    service = Service(CHROMEDRIVER)
    driver = webdriver.Chrome(service=service, options=options)
    started = Owned(pid=service.process.pid, create_time=psutil.Process(service.process.pid).create_time())
    try:
        yield driver
    finally:
        browsers = descendants(started)  # listed before quit: orphans cannot be found through it after
        try:
            driver.quit()
        finally:
            stop_tree(started, grace_s=5.0, extra=browsers)  # only what quit left behind, all ours


def rendered(driver: WebDriver, *texts: str) -> str:
    """Wait until the page's rendered text holds every one of `texts` (not the initial HTML)."""
    def shown(d: WebDriver) -> str | None:
        body = d.find_element(By.TAG_NAME, "body").text
        return body if all(text in body for text in texts) else None
    try:
        return WebDriverWait(driver, RENDER_WAIT_S, poll_frequency=0.5).until(shown)
    except WebDriverException as error:
        raise AssertionError(f"{driver.current_url} never showed {texts}; it shows:\n"
                             f"{driver.find_element(By.TAG_NAME, 'body').text[:2000]}") from error


def screenshot(driver: WebDriver, tmp_path: Path, name: str, showing: str) -> Path:
    """Save the view with the element reading `showing` scrolled into sight."""
    element = driver.find_element(By.XPATH, f"//*[normalize-space(text())='{showing}']")
    driver.execute_script("arguments[0].scrollIntoView({block: 'center'});", element)
    path = tmp_path / f"{name}.png"
    assert driver.save_screenshot(str(path)) and path.stat().st_size > 10_000
    keep = SCREENSHOTS / RUN
    keep.mkdir(parents=True, exist_ok=True)
    shutil.copy(path, keep / path.name)
    return path


def sign_in(driver: WebDriver, url: str, token: str) -> None:
    """As a person does: the dashboard's first 401 opens its token dialog; the token goes in, the
    page POSTs it to /api/authenticate and keeps the cookie it gets back."""
    driver.get(f"{url}/#/overview")
    field = WebDriverWait(driver, RENDER_WAIT_S).until(
        lambda d: d.find_element(By.CSS_SELECTOR, "input[type=password]"))
    rendered(driver, "Authentication Token Required")
    field.send_keys(token)
    driver.find_element(By.XPATH, "//button[translate(normalize-space(), 'submit', 'SUBMIT')='SUBMIT']").click()
    WebDriverWait(driver, RENDER_WAIT_S).until(
        lambda d: any(c["name"] == "ray-authentication-token" for c in d.get_cookies()))


def test_the_job_publishes_its_gauges_to_prometheus_while_it_runs(fleet: Fleet, job: dict[str, Any]) -> None:
    tags = {"job": JOB, "pool": "h100", "strategy": "moe"}

    def published() -> list | None:
        samples = [s for port in export_ports(fleet).values() for s in scrape(port)]
        step = value(samples, "ray_rayfleet_job_step", **tags)
        return samples if step and step >= 1 else None
    samples = wait_until(published, 90, "rayfleet_job_step of the running job", interval=1.0)
    assert value(samples, "ray_rayfleet_job_loss", **tags) > 0
    assert value(samples, "ray_rayfleet_job_tokens_per_second", **tags) > 0
    assert value(samples, "ray_rayfleet_job_restarts", **tags) == 0


def test_the_browser_signs_in_and_sees_the_job_and_the_controller(fleet: Fleet, job: dict[str, Any],
                                                                  browser: WebDriver, tmp_path: Path) -> None:
    doc = json.loads(fleet.cli("dashboard", "-o", "json", timeout=60).stdout)
    token = (fleet.dir / "auth_token").read_text().strip()
    sign_in(browser, doc["url"], token)
    browser.get(doc["views"]["jobs"]["url"])
    jobs_text = rendered(browser, job["submission_id"], "RUNNING")
    assert "Authentication Token Required" not in jobs_text
    row = browser.find_element(By.XPATH, f"//tr[.//*[normalize-space(text())='{job['submission_id']}']]")
    cells = [cell.text.strip() for cell in row.find_elements(By.TAG_NAME, "td")]
    assert JOB in cells and "RUNNING" in cells, cells  # the Name column reads metadata job_name
    screenshot(browser, tmp_path, "jobs", job["submission_id"])
    browser.get(doc["views"]["actors"]["url"])
    # The table pages 10 actors at a time (agents, workers, supervisors...): filter it by name, as
    # a user would, through the view's own "Name" filter.
    def type_name(d: WebDriver) -> bool:  # the table re-renders as data arrives: find it afresh
        d.find_element(By.XPATH, "//label[normalize-space(text())='Name']/..//input").send_keys("rayfleet-controller")
        return True
    WebDriverWait(browser, RENDER_WAIT_S, ignored_exceptions=(WebDriverException,)).until(type_name)
    rendered(browser, "rayfleet-controller", "FleetController")
    row = browser.find_element(By.XPATH, "//tr[.//*[normalize-space(text())='rayfleet-controller']]")
    assert "ALIVE" in row.text and "FleetController" in row.text, row.text
    screenshot(browser, tmp_path, "actors", "rayfleet-controller")


def test_the_cli_lists_the_running_job_at_80_columns_and_names_known_jobs_for_an_unknown_one(
        fleet: Fleet, job: dict[str, Any]) -> None:
    lines = lines_at_80_columns(fleet, "jobs")
    row = next(line.split() for line in lines if line.startswith(JOB))
    assert row[1] == "RUNNING" and row[-3:-1] == ["h100", "moe"]
    logs = fleet.cli("logs", JOB, "-o", "json", timeout=60)
    assert logs.returncode == 0, logs.stderr
    doc = json.loads(logs.stdout)
    assert doc["submission_id"] == job["submission_id"] and "[rayfleet] step 1/5000" in doc["logs"]
    unknown = fleet.cli("logs", "no-such-job", timeout=60)
    assert unknown.returncode == 2 and "Traceback" not in unknown.stderr
    assert len(unknown.stderr.strip().splitlines()) == 1 and f"jobs: {JOB}" in unknown.stderr
