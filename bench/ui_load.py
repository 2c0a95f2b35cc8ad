#!/usr/bin/env python3
"""Loads one UI page in a fresh headless Chromium and reports, as one JSON line, what
the first load cost: the time from navigation start to the first list of services (the
`proconsul:services-listed` performance mark the page sets when it first draws the
list) and the bytes the browser received by then, by kind (transfer sizes, headers
included; the blocking query still held open is not finished and not counted).

  bench/ui_load.py CHROMIUM URL

The browser is driven over the DevTools protocol through a pipe
(`--remote-debugging-pipe`: commands on fd 3, replies on fd 4, NUL-terminated JSON),
with a new profile each time, so nothing is cached.
"""
import json
import os
import subprocess
import sys
import tempfile
import time

TIMEOUT_S = 60


def main():
    chromium, url = sys.argv[1], sys.argv[2]
    with tempfile.TemporaryDirectory() as profile:
        to_r, to_w = os.pipe()
        from_r, from_w = os.pipe()

        def fds():
            # Move both ends out of the way first: either may already sit on 3 or 4.
            a, b = os.dup(to_r), os.dup(from_w)
            os.dup2(a, 3)
            os.dup2(b, 4)

        proc = subprocess.Popen(
            [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
             "--disable-extensions", "--disable-background-networking", "--no-first-run",
             "--remote-debugging-pipe", "--window-size=1280,720", f"--user-data-dir={profile}",
             "about:blank"],
            preexec_fn=fds, close_fds=False,
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        os.close(to_r)
        os.close(from_w)
        out = os.fdopen(to_w, "wb")
        inp = os.fdopen(from_r, "rb")
        buf = b""
        next_id = [0]

        def call(method, params=None, session=None):
            nonlocal buf
            next_id[0] += 1
            msg = {"id": next_id[0], "method": method, "params": params or {}}
            if session:
                msg["sessionId"] = session
            out.write(json.dumps(msg).encode() + b"\0")
            out.flush()
            while True:
                while b"\0" not in buf:
                    chunk = os.read(inp.fileno(), 65536)
                    if not chunk:
                        sys.exit("the browser closed its pipe")
                    buf += chunk
                line, buf = buf.split(b"\0", 1)
                reply = json.loads(line)
                if reply.get("id") == next_id[0]:
                    if "error" in reply:
                        sys.exit(f"{method}: {reply['error']}")
                    return reply["result"]

        try:
            target = call("Target.createTarget", {"url": "about:blank"})["targetId"]
            session = call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
            call("Page.navigate", {"url": url}, session)
            deadline = time.time() + TIMEOUT_S
            probe = """(() => {
              const m = performance.getEntriesByName('proconsul:services-listed')[0];
              if (!m) return null;
              const nav = performance.getEntriesByType('navigation')[0];
              const res = performance.getEntriesByType('resource').filter(r => r.responseEnd <= m.startTime);
              const kind = r => r.initiatorType === 'fetch' ? 'api' :
                  r.name.includes('.js') ? 'js' : r.name.includes('.css') ? 'css' : 'other';
              const bytes = {html: nav.transferSize, js: 0, css: 0, api: 0, other: 0};
              for (const r of res) bytes[kind(r)] += r.transferSize;
              return {first_list_ms: m.startTime, bytes,
                      total_bytes: Object.values(bytes).reduce((a, b) => a + b, 0),
                      requests: 1 + res.length,
                      rows: document.querySelectorAll('tr.service').length};
            })()"""
            while True:
                r = call("Runtime.evaluate", {"expression": probe, "returnByValue": True}, session)
                value = r.get("result", {}).get("value")
                if value:
                    print(json.dumps(value))
                    return
                if time.time() > deadline:
                    sys.exit("the services list did not appear")
                time.sleep(0.05)
        finally:
            try:
                call("Browser.close")
            except BaseException:
                pass
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


if __name__ == "__main__":
    main()
