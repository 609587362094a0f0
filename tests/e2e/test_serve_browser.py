"""pipelines/serve.py end to end in a browser: the server starts its own local Ray, headless
Chromium (Debian's `chromium` package; driven over the DevTools protocol with `websockets`)
opens the page, uploads an image, submits a prompt, waits for the answer and takes a
screenshot showing it with a generated image.

The screenshot is saved in the test's tmp dir and copied to .cache/screenshots/serve_page.png
(the path is printed). Nothing is installed: without a chromium binary the test skips.
"""

from __future__ import annotations

import base64
import itertools
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

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests" / "unit"))
from coco_fixtures import write_artifact  # noqa: E402

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
SCREENSHOT_COPY = REPO / ".cache" / "screenshots" / "serve_page.png"
SERVER_START_S = 240
ANSWER_S = 180

pytestmark = [
    pytest.mark.skipif(
        CHROMIUM is None,
        reason="headless browser test: no `chromium` on PATH (Debian's `chromium` package "
               "provides /usr/bin/chromium); this test installs nothing",
    ),
    pytest.mark.timeout(SERVER_START_S + ANSWER_S + 240),
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stop(process: subprocess.Popen, sig: int, wait_s: float) -> int | None:
    """Send `sig` to a process this test started; kill it after `wait_s`. Its exit code."""
    if process.poll() is None:
        process.send_signal(sig)
        try:
            process.wait(wait_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(30)
            return None
    return process.returncode


@pytest.fixture(scope="module")
def server(tiny_zoo, tmp_path_factory):
    """pipelines/serve.py on a free loopback port, with a Ray it starts itself; stopped with
    SIGINT (Serve and that Ray shut down) at the end."""
    root = tmp_path_factory.mktemp("serve_browser")
    artifact = write_artifact(tiny_zoo, root / "artifact")
    port = _free_port()
    log = root / "serve.log"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, str(REPO / "pipelines" / "serve.py"), "--model", str(artifact),
           "--port", str(port), "--address", "local", "--gpu", "no"]
    with open(log, "w") as out:
        process = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env,
                                   cwd=root, start_new_session=True)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + SERVER_START_S
    try:
        while f"on {url}" not in log.read_text():
            if process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"serve.py did not start (exit {process.poll()}):\n"
                            f"{log.read_text()[-4000:]}")
            time.sleep(1)
        yield url, process, log
    finally:
        _stop(process, signal.SIGINT, 90)


class DevTools:
    """A minimal Chrome DevTools Protocol client over one page's websocket."""

    def __init__(self, ws_url: str) -> None:
        from websockets.sync.client import connect

        self.ws = connect(ws_url, max_size=None, open_timeout=30)
        self.ids = itertools.count(1)

    def call(self, method: str, **params):
        call_id = next(self.ids)
        self.ws.send(json.dumps({"id": call_id, "method": method, "params": params}))
        while True:  # events arrive in between; skip them
            message = json.loads(self.ws.recv(timeout=60))
            if message.get("id") == call_id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message["result"]

    def js(self, expression: str):
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True,
                           awaitPromise=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def wait_for(self, expression: str, timeout_s: float):
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            value = self.js(expression)
            if value:
                return value
            time.sleep(0.25)
        raise TimeoutError(f"waited {timeout_s}s for {expression}")

    def close(self) -> None:
        self.ws.close()


@pytest.fixture()
def browser(tmp_path):
    """Headless Chromium with remote debugging on a free port, stopped at the end."""
    profile = tmp_path / "profile"
    cmd = [CHROMIUM, "--headless=new", "--no-sandbox", "--disable-gpu",
           "--disable-dev-shm-usage", "--no-first-run", "--hide-scrollbars",
           "--remote-debugging-address=127.0.0.1", "--remote-debugging-port=0",
           f"--user-data-dir={profile}", "--window-size=900,1100", "about:blank"]
    log = tmp_path / "chromium.log"
    with open(log, "w") as out:
        process = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT,
                                   start_new_session=True)
    port_file = profile / "DevToolsActivePort"
    deadline = time.monotonic() + 60
    try:
        while not (port_file.exists() and port_file.read_text().strip()):
            if process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"chromium did not start:\n{log.read_text()[-3000:]}")
            time.sleep(0.2)
        port = int(port_file.read_text().splitlines()[0])
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=30) as r:
            pages = [t for t in json.load(r) if t["type"] == "page"]
        tools = DevTools(pages[0]["webSocketDebuggerUrl"])
        try:
            yield tools
        finally:
            tools.close()
    finally:
        _stop(process, signal.SIGTERM, 20)


def test_the_page_answers_a_prompt_with_an_image(server, browser, tmp_path, capsys):
    url, process, log = server
    photo = tmp_path / "photo.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (24, 24, 3), np.uint8)).save(photo)

    browser.call("Page.enable")
    browser.call("Page.navigate", url=url)
    browser.wait_for("document.readyState === 'complete' && !!document.getElementById('prompt')"
                     " && document.getElementById('model').textContent.length > 0", 60)

    # the upload, through the real file input
    document = browser.call("DOM.getDocument")
    node = browser.call("DOM.querySelector", nodeId=document["root"]["nodeId"],
                        selector="#images")
    browser.call("DOM.setFileInputFiles", files=[str(photo)], nodeId=node["nodeId"])
    # the tiny random model draws at once when <dream_start> is boosted, then writes text
    fields = {"prompt": "a red bus next to <image>", "mode": "interleaved", "max_images": "1",
              "image_bias": "10000", "steps": "2", "max_new_tokens": "8"}
    browser.js(f"""(() => {{
        const fields = {json.dumps(fields)};
        for (const [id, value] of Object.entries(fields)) document.getElementById(id).value = value;
        document.getElementById('submit').click();
    }})()""")
    state = browser.wait_for("['done', 'error'].includes(document.body.dataset.state) && "
                             "document.body.dataset.state", ANSWER_S)
    status = browser.js("document.getElementById('status').textContent")
    assert state == "done", f"{status}\n{log.read_text()[-3000:]}"

    answer = browser.js("""(() => {
        const imgs = Array.from(document.querySelectorAll('#answer img'));
        return {
            images: imgs.map((i) => ({complete: i.complete, width: i.naturalWidth,
                                      src: i.src.slice(0, 21)})),
            texts: Array.from(document.querySelectorAll('#answer .text'))
                       .map((p) => p.textContent),
            order: Array.from(document.getElementById('answer').children)
                       .map((e) => e.tagName),
        };
    })()""")
    assert answer["order"] == ["IMG", "P"], answer
    (image,) = answer["images"]
    assert image["complete"] and image["width"] > 0 and image["src"] == "data:image/png;base64"
    assert answer["texts"][0].strip() and "interleaved answer" in status

    shot = browser.call("Page.captureScreenshot", format="png")
    path = tmp_path / "serve_page.png"
    path.write_bytes(base64.b64decode(shot["data"]))
    with Image.open(path) as screenshot:
        assert screenshot.format == "PNG" and screenshot.width >= 800
        # the answer's image is drawn 256 px wide: the page is far from blank
        assert len(set(screenshot.convert("RGB").getdata())) > 50
    SCREENSHOT_COPY.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(path, SCREENSHOT_COPY)
    with capsys.disabled():
        print(f"\nscreenshot of the answered page: {SCREENSHOT_COPY} (also {path})")

    # a bad upload from the page: an error shown, and the server keeps serving
    notes = tmp_path / "notes.txt"
    notes.write_text("not a picture")
    browser.call("DOM.setFileInputFiles", files=[str(notes)], nodeId=node["nodeId"])
    browser.js("document.getElementById('submit').click()")
    browser.wait_for("document.body.dataset.state === 'error'", ANSWER_S)
    error = browser.js("document.getElementById('status').textContent")
    assert "images[0] (notes.txt): not an image" in error
    assert process.poll() is None


def test_the_server_stops_cleanly_on_sigint(server):
    url, process, log = server
    assert _stop(process, signal.SIGINT, 90) == 0, log.read_text()[-3000:]
    assert "stopping" in log.read_text()
