"""Opens a page in headless Chromium and reports what it shows, for the shop's browser test.

    live_page.py URL

Starts Debian's chromium-headless-shell (installed into .tools/chromium by
scripts/guest-tools), opens URL through the DevTools protocol and waits until the page
says it is live (its ``#connection`` element reads ``live``). Then, for each line
``ID TEXT`` read from stdin, waits until the page's element ``#ID`` contains TEXT and
prints ``seen ID: <the element's text>``. Exits 0 at the end of stdin; on a timeout it
prints what the page showed and exits 1.
"""

import itertools
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request

import websocket

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "../../../.."))
PREFIX = os.path.join(ROOT, ".tools/chromium")
TIMEOUT = 60


class Page:
    """One tab, driven over its DevTools WebSocket."""

    def __init__(self, ws_url):
        # No Origin header: DevTools refuses WebSockets from origins it was not told of.
        self.ws = websocket.create_connection(ws_url, timeout=TIMEOUT, suppress_origin=True)
        self.ids = itertools.count(1)

    def call(self, method, **params):
        id = next(self.ids)
        self.ws.send(json.dumps({"id": id, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv())
            if msg.get("id") == id:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg["result"]

    def eval(self, expression):
        r = self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        return r["result"].get("value")


def wait_for(page, expression, what):
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline:
        value = page.eval(expression)
        if value:
            return value
        time.sleep(0.1)
    shown = page.eval("document.body.innerText")
    print(f"timed out waiting for {what}; the page shows:\n{shown}", file=sys.stderr)
    sys.exit(1)


def main():
    url = sys.argv[1]
    profile = tempfile.mkdtemp(prefix="sluice-browser-")
    env = dict(os.environ)
    libs = [os.path.join(PREFIX, p) for p in (
        "usr/lib/x86_64-linux-gnu", "usr/lib/x86_64-linux-gnu/pulseaudio", "usr/lib/chromium")]
    env["LD_LIBRARY_PATH"] = ":".join(libs + [env.get("LD_LIBRARY_PATH", "")])
    log = open(os.path.join(profile, "chromium.log"), "w")
    chromium = subprocess.Popen(
        [os.path.join(PREFIX, "usr/lib/chromium/chromium-headless-shell"),
         "--no-sandbox", "--disable-gpu", "--remote-debugging-port=0",
         f"--user-data-dir={profile}", "about:blank"],
        env=env, stdout=log, stderr=log)
    try:
        # Chromium writes the port it listens on into the profile.
        port_file = os.path.join(profile, "DevToolsActivePort")
        deadline = time.monotonic() + TIMEOUT
        while not os.path.exists(port_file) or not open(port_file).read().strip():
            if chromium.poll() is not None or time.monotonic() > deadline:
                log.flush()
                print(open(os.path.join(profile, "chromium.log")).read(), file=sys.stderr)
                sys.exit("chromium did not start")
            time.sleep(0.05)
        port = open(port_file).read().split()[0]
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list") as r:
            tabs = [t for t in json.load(r) if t["type"] == "page"]
        page = Page(tabs[0]["webSocketDebuggerUrl"])
        page.call("Page.navigate", url=url)
        wait_for(page, "document.getElementById('connection')?.textContent === 'live'",
                 "the page to go live")
        print("ready", flush=True)
        for line in sys.stdin:
            id, _, text = line.strip().partition(" ")
            expr = (f"(() => {{ const e = document.getElementById({json.dumps(id)});"
                    f" return e && e.innerText.includes({json.dumps(text)}) ? e.innerText : ''; }})()")
            shown = wait_for(page, expr, f"#{id} to show {text!r}")
            print(f"seen {id}: {' '.join(shown.split())}", flush=True)
    finally:
        chromium.terminate()
        chromium.wait()
        shutil.rmtree(profile, ignore_errors=True)


if __name__ == "__main__":
    main()
