"""The REAL Airflow web UI in headless Chromium (Selenium), against the session's deployment
(tests/deployment/conftest.py): sign in on SimpleAuthManager's login page, fill the RG
campaign's trigger form (tiny params, the Slurm test site), submit it, wait until the grid
shows the run's last task as success, then open round 1's submit task and find the trigger's
progress lines in the log view.

Selectors are the UI's own ``data-testid`` attributes, the form fields' ``name=element_<param>``
and the UI's URLs (``/dags/<id>/runs/<run>/tasks/<task>/mapped/<index>``); every wait is a
WebDriverWait on a condition. Chromium and its driver are Debian's ``chromium`` and
``chromium-driver`` (tests/site/site.sh installs them); without them the test FAILS, naming them.
"""

from __future__ import annotations

import re
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import unquote

import pytest

from .client import AirflowClient
from .conftest import ADMIN, Deployment

try:
    from selenium import webdriver
    from selenium.common.exceptions import StaleElementReferenceException, TimeoutException, WebDriverException
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.remote.webdriver import WebDriver
    from selenium.webdriver.support import expected_conditions as EC
    from selenium.webdriver.support.ui import WebDriverWait
except ImportError as e:  # the test extra was not installed: fail, never skip
    SELENIUM_MISSING: str | None = f"{e} (pip install -e '.[test]' installs selenium)"
else:
    SELENIUM_MISSING = None

DAG = "rg_campaign"
CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
#: seconds a page element may take to appear (the React app loads, then queries the API)
UI_TIMEOUT = 30
#: seconds the campaign may take from the form's Trigger button to success
RUN_TIMEOUT = 300
#: the trigger form's values: one RG step of 2 batches on the Slurm site (poll_interval 1 s)
STEPS, BATCHES = 1, 2
FORM = {"site_conn_id": "slurm_site", "steps": STEPS, "samples": 2000, "batches": BATCHES, "throttle": BATCHES}


def _chromium_options(profile: str) -> "webdriver.ChromeOptions":
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    # as root and without a display; no background connections (this machine's network is
    # closed: Chromium's own update/sync requests would be refused, many at a time)
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic",
                "--no-first-run", "--disable-background-networking", "--disable-component-update",
                "--disable-sync", "--window-size=1600,1200", f"--user-data-dir={profile}"):
        options.add_argument(arg)
    return options


@pytest.fixture
def browser() -> Iterator[WebDriver]:
    if SELENIUM_MISSING:
        pytest.fail(f"selenium is not importable: {SELENIUM_MISSING}", pytrace=False)
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.is_file()]
    if missing:
        pytest.fail(f"{', '.join(missing)} missing: install the Debian packages chromium and chromium-driver "
                    "(tests/site/site.sh start does)", pytrace=False)
    profile = tempfile.mkdtemp(prefix="batchsite-ui-chromium-")
    try:
        driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=_chromium_options(profile))
    except WebDriverException as e:
        shutil.rmtree(profile, ignore_errors=True)
        pytest.fail(f"headless Chromium ({CHROMIUM}, driver {CHROMEDRIVER}) did not start: {e.msg}", pytrace=False)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def _wait(driver: WebDriver, timeout: float = UI_TIMEOUT) -> WebDriverWait:
    return WebDriverWait(driver, timeout, poll_frequency=0.5, ignored_exceptions=(StaleElementReferenceException,))


def _sign_in(driver: WebDriver, deployment: Deployment, path: str) -> None:
    """Open ``path``; the UI redirects to SimpleAuthManager's login page, which returns there."""
    driver.get(deployment.base_url + path)
    _wait(driver).until(EC.element_to_be_clickable((By.NAME, "username"))).send_keys(ADMIN)
    driver.find_element(By.NAME, "password").send_keys(deployment.admin_password)
    driver.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
    _wait(driver).until(EC.url_contains(path))


def _fill(driver: WebDriver, name: str, value: object) -> None:
    """Replace a form field's text as a user does (select all, type): React sees real key events."""
    field = _wait(driver).until(EC.element_to_be_clickable((By.NAME, name)))
    driver.execute_script("arguments[0].scrollIntoView({block: 'center'})", field)
    field.send_keys(Keys.CONTROL, "a")
    field.send_keys(Keys.DELETE)
    field.send_keys(str(value))


def _trigger_from_form(driver: WebDriver, values: dict[str, object]) -> str:
    """The DAG page's Trigger button, the form's Run Parameters, the dialog's Trigger button;
    the UI then shows the new run: its id is the last part of that URL."""
    _wait(driver).until(EC.element_to_be_clickable((By.CSS_SELECTOR, "[data-testid=trigger-dag-button]"))).click()
    _wait(driver).until(EC.visibility_of_element_located((By.CSS_SELECTOR, "[data-testid=config-form]")))
    for param, value in values.items():
        _fill(driver, f"element_{param}", value)
    submit = _wait(driver).until(EC.element_to_be_clickable((By.CSS_SELECTOR, "[data-testid=trigger-dag-submit]")))
    driver.execute_script("arguments[0].scrollIntoView({block: 'center'})", submit)
    submit.click()
    _wait(driver).until(EC.url_matches(rf"/dags/{DAG}/runs/[^/?#]+"))
    return unquote(re.search(rf"/dags/{DAG}/runs/([^/?#]+)", driver.current_url).group(1))


def _grid_cell_state(driver: WebDriver, run_id: str, task_id: str) -> Callable[[WebDriver], str | bool]:
    """Condition: the state the grid's cell of ``task_id`` shows in its tooltip ("State: X"),
    once it is final (Success, or a failure or skip, so that the wait ends at once with it)."""
    cell = (By.CSS_SELECTOR, f'[data-testid="grid-{run_id}-{task_id}"]')

    def state(d: WebDriver) -> str | bool:
        tips = [t.text for t in d.find_elements(By.CSS_SELECTOR, "[data-scope=tooltip][data-part=content]")
                if t.is_displayed() and f"Task ID: {task_id}\n" in t.text]
        if not tips:  # hover the cell (again: a grid refresh may have closed the tooltip)
            elements = d.find_elements(*cell)
            if elements:
                ActionChains(d).move_to_element(elements[0]).perform()
            return False
        found = re.search(r"^State: (.+)$", tips[0], re.M)
        shown = found.group(1) if found else ""
        return shown if shown in ("Success", "Failed", "Upstream Failed", "Skipped") else False

    return state


def _log_line(pattern: str) -> Callable[[WebDriver], str | bool]:
    """Condition: a line of the (virtualized) log view matches; scrolls one view further each
    poll, back to the top at the end, so every line is rendered at some point."""
    regex = re.compile(pattern)

    def line(d: WebDriver) -> str | bool:
        for item in d.find_elements(By.CSS_SELECTOR, "[data-testid^=virtualized-item-]"):
            if regex.search(item.text):
                return item.text
        d.execute_script(
            "const c = document.querySelector('[data-testid=virtual-scroll-container]');"
            "if (c) { c.scrollTop = (c.scrollTop + c.clientHeight >= c.scrollHeight) ? 0 : c.scrollTop + c.clientHeight / 2; }")
        return False

    return line


def test_rg_campaign_triggered_from_the_web_ui_form(deployment: Deployment, browser: WebDriver):
    t0 = time.monotonic()
    version = f"ui{uuid.uuid4().hex[:6]}"
    _sign_in(browser, deployment, f"/dags/{DAG}")
    run_id = _trigger_from_form(browser, {"version": version, **FORM})
    t_triggered = time.monotonic()

    # the form's values reached the run as its conf (the server validated them)
    client = AirflowClient(deployment.base_url, ADMIN, deployment.admin_password)
    try:
        conf = client.run(DAG, run_id)["conf"]
        assert {k: conf.get(k) for k in ("version", *FORM)} == {"version": version, **FORM}, conf

        # the grid (left of the run page the UI opened) shows the last task, report, as success
        try:
            shown = _wait(browser, RUN_TIMEOUT).until(_grid_cell_state(browser, run_id, "report"))
        except TimeoutException:
            deployment.fail_if_dead()
            pytest.fail(f"the grid never showed report as success within {RUN_TIMEOUT}s: "
                        f"{client.failure_report(DAG, run_id)}", pytrace=False)
        assert shown == "Success", client.failure_report(DAG, run_id)
        t_success = time.monotonic()
        assert client.run(DAG, run_id)["state"] == "success"
        badge = _wait(browser).until(EC.visibility_of_element_located(
            (By.CSS_SELECTOR, "[data-testid=header-card] [data-testid=state-badge]")))
        _wait(browser).until(lambda d: badge.text.strip() == "Success")
    finally:
        client.close()

    # round 1's submit task (map index 0): its log view holds the trigger's progress lines
    browser.get(f"{deployment.base_url}/dags/{DAG}/runs/{run_id}/tasks/round_01.submit/mapped/0")
    _wait(browser).until(EC.visibility_of_element_located((By.CSS_SELECTOR, "[data-testid=virtualized-list]")))
    progress = _wait(browser).until(_log_line(rf"RG step 1: \d+/{BATCHES} done"))
    done = _wait(browser).until(_log_line(rf"RG step 1: {BATCHES}/{BATCHES} done; fan-in done"))
    print(f"\nUI: RG campaign {run_id} (version {version}, Slurm site): form submitted "
          f"{t_triggered - t0:.1f}s after the browser opened the DAG page, grid showed success "
          f"{t_success - t_triggered:.1f}s later; log lines found {time.monotonic() - t_success:.1f}s later; "
          f"total {time.monotonic() - t0:.1f}s\n  {progress.splitlines()[-1]}\n  {done.splitlines()[-1]}")
