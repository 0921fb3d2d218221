"""The app left running for a team: logins, a network address, a bounded queue, a health check and a clean stop.

One app (configs/app.json started by its command on tiny networks) listens on 0.0.0.0 with logins from a file
and room for one waiting request; it is driven in headless Chromium and over HTTP, and stopped with SIGTERM
(what ``docker stop``, systemd and Kubernetes send) while a request runs and another waits. The refusal to
serve a network without a login, the logins' parsing and the stop's parts are checked in-process.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from helpers.app import APP_CONFIGS, WAIT_S, free_port, start_app
from helpers.bundle import tiny_parser
from scripts.app.access import AppAccessError, check_access, is_loopback, read_auth
from scripts.app.lifecycle import AppStoppingError, ServiceState, drain, stop_signals
from scripts.common.errors import root_cause
from scripts.common.progress import progress

#: logins of the app (a password may hold ':' and spaces)
USERS = {"alice": "s3cret: with colon", "bob": "pw"}
#: images and steps of a request that runs until the app stops it (minutes on tiny networks)
LONG_IMAGES, LONG_STEPS = 8, 1000
STOPPING = "The app is stopping (SIGTERM): this request was not finished; send it again once the app is back."


def _health(url: str) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(f"{url}health", timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def _wait_for(condition, what: str, process=None) -> None:
    deadline = time.monotonic() + WAIT_S
    while not condition():
        assert process is None or process.poll() is None, f"the app exited ({process.returncode}) before {what}"
        assert time.monotonic() < deadline, f"no {what} within {WAIT_S} s"
        time.sleep(0.2)


@pytest.fixture(scope="module")
def team_app(tiny_model_dir, tmp_path_factory):
    """The app on 0.0.0.0 (reached at 127.0.0.1) with logins from a file, one waiting request at most; its URL,
    process, temporary folder and log. ``test_sigterm_...`` stops it; a failed test's app is killed."""
    temporary = tmp_path_factory.mktemp("team_app_tmp")
    users = temporary / "users.txt"
    users.write_text("# team logins\n" + "".join(f"{user}:{password}\n" for user, password in USERS.items()))
    # stop_timeout_s is an upper bound: the stop itself takes about a second
    process, url, log = start_app(
        tiny_model_dir, temporary, host="0.0.0.0", auth=str(users), max_queue=1, stop_timeout_s=60
    )
    try:
        yield {"url": url, "process": process, "tmp": temporary, "log": log}
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def _logged_in_page(browser, url: str, user: str = "alice", password: str = USERS["alice"]):
    """A page of its own browser context (own cookies) past the login form."""
    page = browser.new_context(viewport={"width": 1100, "height": 900}).new_page()
    page.set_default_timeout(WAIT_S * 1000)
    page.goto(url)
    page.get_by_label("username").fill(user)
    page.get_by_label("password").fill(password)
    page.get_by_role("button", name="Login").click()
    return page


def _generate(client, steps: int) -> list:
    return client.predict("Small left pleural effusion", "", 1, 7, steps, 7.0, "unipc_karras", api_name="/generate")


# -- the app on a network address, with logins ----------------------------------------------------------------------
def test_health_answers_without_a_login(team_app):
    assert _health(team_app["url"]) == (200, {"status": "ok", "running": 0, "waiting": 0})


def test_api_needs_a_login(team_app):
    from gradio_client import Client

    request = urllib.request.Request(
        f"{team_app['url']}gradio_api/call/generate",
        data=json.dumps({"data": ["effusion", "", 1, 0, 3, 7.0, "unipc_karras"]}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=30)
    assert refused.value.code == 401
    with pytest.raises(Exception, match="(?i)incorrect|login|credentials"):
        Client(team_app["url"], auth=("alice", "wrong"), verbose=False)
    gallery, downloads, table = _generate(Client(team_app["url"], auth=("bob", USERS["bob"]), verbose=False), 3)
    assert len(gallery) == 1 and [Path(path).suffix for path in downloads] == [".png", ".dcm"]


def test_page_asks_for_a_login(browser, team_app):
    page = _logged_in_page(browser, team_app["url"], password="wrong")
    page.get_by_text("Incorrect Credentials").wait_for()
    assert page.locator("#generate").count() == 0
    page.close()
    page = _logged_in_page(browser, team_app["url"])
    page.locator("#generate").wait_for()
    page.close()


# -- a full queue, then SIGTERM: last, it stops the app ------------------------------------------------------------
def test_sigterm_stops_running_and_waiting_requests_with_a_message_and_exits_0(browser, team_app):
    """A page's request runs (thousands of steps), a client's waits, a third finds the queue full (in a page too);
    SIGTERM then stops the running and the waiting request with the bundle's message, the app exits 0 within
    seconds and leaves no temporary folder."""
    from gradio_client import Client
    from gradio_client.exceptions import AppError
    from gradio_client.utils import QueueError

    url, process = team_app["url"], team_app["process"]
    running = _logged_in_page(browser, url)
    running.get_by_label("number of images").fill(str(LONG_IMAGES))
    running.locator("#steps input").fill(str(LONG_STEPS))
    running.locator("#generate").click()
    _wait_for(lambda: _health(url)[1]["running"] == 1, "running request", process)

    answers = {}

    def waiting_client():
        try:
            answers["waiting"] = _generate(Client(url, auth=("bob", USERS["bob"]), verbose=False), 3)
        except Exception as error:  # noqa: BLE001 (checked below)
            answers["waiting"] = error

    waiting = threading.Thread(target=waiting_client)
    waiting.start()
    _wait_for(lambda: _health(url)[1]["waiting"] == 1 or "waiting" in answers, "waiting request", process)
    assert "waiting" not in answers, answers
    with pytest.raises(QueueError, match="Queue is full"):
        _generate(Client(url, auth=("alice", USERS["alice"]), verbose=False), 3)
    busy = _logged_in_page(browser, url)
    busy.locator("#generate").click()
    busy.get_by_text("This application is currently busy. Please try again.").first.wait_for()
    assert _health(url) == (200, {"status": "ok", "running": 1, "waiting": 1})

    stop = time.monotonic()
    process.send_signal(signal.SIGTERM)
    running.get_by_text(STOPPING).first.wait_for()
    waiting.join(WAIT_S)
    assert process.wait(WAIT_S) == 0, team_app["log"].read_text()[-4000:]
    assert time.monotonic() - stop < 30, "the stop did not end the running request at its next step"
    assert isinstance(answers["waiting"], AppError) and str(answers["waiting"]) == STOPPING, answers
    assert not list(team_app["tmp"].glob("cxr-ldm-app-*")), "the app left its temporary folder behind"
    log = team_app["log"].read_text()
    assert "SIGTERM: stopping" in log and "Stopped; temporary files removed." in log, log[-4000:]
    with pytest.raises(OSError):
        _health(url)


# -- in-process: access, logins, the stop's parts ------------------------------------------------------------------
@pytest.mark.parametrize(
    "host, share, auth, allowed, refusal",
    [
        ("127.0.0.1", False, None, False, None),
        ("localhost", False, None, False, None),
        ("::1", False, None, False, None),
        ("0.0.0.0", False, None, False, "--host 0.0.0.0 opens the app to every machine that can reach this one"),
        ("cxr.example.org", False, None, False, "--host cxr.example.org opens the app"),
        ("127.0.0.1", True, None, False, "--share true publishes the app on a public link"),
        ("0.0.0.0", False, "alice:pw", False, None),
        ("0.0.0.0", False, None, "true", None),
    ],
)
def test_a_network_host_needs_a_login_or_an_explicit_choice(host, share, auth, allowed, refusal):
    if refusal is None:
        logins = check_access(host, share, auth, allowed)
        assert logins == ([("alice", "pw")] if auth else None)
        return
    with pytest.raises(AppAccessError) as refused:
        check_access(host, share, auth, allowed)
    text = str(refused.value)
    assert text.startswith(refusal) and len(text.splitlines()) == 1, text
    assert text.endswith(
        "where anyone could use it without logging in: add --auth user:password (or a file of user:password lines), "
        "or --allow_unauthenticated true if everyone there may use it."
    )


def test_the_app_refuses_a_network_host_before_it_loads_or_serves_anything(tmp_path):
    from scripts.app.server import SessionFolders, serve

    parser = tiny_parser(*APP_CONFIGS, host="0.0.0.0")
    with pytest.raises(Exception) as refused:
        parser.get_parsed_content("check_access")  # the app's run checks access before the networks load
    assert isinstance(root_cause(refused.value), AppAccessError)
    assert str(root_cause(refused.value)).startswith("--host 0.0.0.0 opens the app")
    folders = SessionFolders()
    with pytest.raises(AppAccessError, match="^--host 0.0.0.0 opens the app"):
        serve(None, folders, {}, host="0.0.0.0", port=free_port(), block=False)
    assert folders._temporary_root is None  # nothing was created, nothing listens
    assert tiny_parser(*APP_CONFIGS, host="0.0.0.0", auth="a:b").get_parsed_content("check_access") == [("a", "b")]
    assert is_loopback("127.0.0.2") and not is_loopback("10.0.0.1")


def test_logins_come_from_the_command_line_or_a_file(tmp_path):
    users = tmp_path / "users.txt"
    users.write_text("# comment\n\nalice:pa:ss word\n  bob:x\n")
    assert read_auth(str(users)) == [("alice", "pa:ss word"), ("bob", "x")]
    assert read_auth("alice:pw") == [("alice", "pw")]
    assert read_auth("alice:pw,bob:x") == read_auth(("alice:pw", "bob:x")) == [("alice", "pw"), ("bob", "x")]
    assert read_auth(None) is None and read_auth("") is None
    with pytest.raises(AppAccessError, match=r"^--auth entry 2 is neither user:password nor an existing file"):
        read_auth(("alice:pw", "bob"))
    users.write_text("alice:pw\nbob-without-password\n")
    with pytest.raises(AppAccessError) as refused:
        read_auth(str(users))
    assert str(refused.value) == f"--auth: line 2 of '{users}' is not user:password; fix or remove it."
    users.write_text("# nobody\n")
    with pytest.raises(AppAccessError, match="holds no user:password line"):
        read_auth(str(users))


def test_stop_signals_ask_the_app_to_stop_instead_of_ending_the_process():
    state = ServiceState()
    before = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    with stop_signals(state):
        os.kill(os.getpid(), signal.SIGTERM)
        _wait_for(state.stop_requested.is_set, "stop request")
        os.kill(os.getpid(), signal.SIGINT)
        _wait_for(lambda: state.stop_requests == 2, "second stop request")
    assert state.stop_reason == "SIGTERM"
    assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == before


def test_a_stopping_app_ends_the_running_request_at_its_next_step_and_refuses_new_ones():
    state = ServiceState()
    state.request_stop("SIGTERM")
    steps, ended = [], {}

    def request():
        try:
            with state.request():
                for step in progress(range(10**9), enabled=False):  # a denoising loop that would never end
                    steps.append(step)
                    time.sleep(0.01)
        except AppStoppingError as error:
            ended["error"] = error

    worker = threading.Thread(target=request)
    worker.start()
    _wait_for(lambda: len(steps) > 3, "running request")
    assert state.health(waiting=2) == (200, {"status": "ok", "running": 1, "waiting": 2})
    assert drain(state, lambda: 0, timeout_s=WAIT_S)  # idle once the request passed its next step
    worker.join()
    assert str(ended["error"]) == STOPPING and state.running == 0
    assert state.health(waiting=0) == (503, {"status": "stopping", "running": 0, "waiting": 0})
    with pytest.raises(AppStoppingError, match="^The app is stopping"):
        with state.request():
            pass
    for _ in progress(range(3), enabled=False):  # outside a request, loops are not checked
        pass


def test_the_stop_gives_up_after_its_timeout_or_a_second_signal():
    state = ServiceState()
    release = threading.Event()

    def request_without_steps():
        with state.request():
            release.wait(WAIT_S)

    worker = threading.Thread(target=request_without_steps)
    worker.start()
    _wait_for(lambda: state.running == 1, "running request")
    start = time.monotonic()
    assert not drain(state, lambda: 0, timeout_s=0.3)
    assert 0.3 <= time.monotonic() - start < 5
    threading.Timer(0.2, state.request_stop, args=("SIGINT",)).start()
    start = time.monotonic()
    assert not drain(state, lambda: 0, timeout_s=WAIT_S)  # the second signal ends the wait
    assert time.monotonic() - start < 5
    release.set()
    worker.join()
    assert drain(state, lambda: 0, timeout_s=1)
