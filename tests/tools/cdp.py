#!/usr/bin/python3
"""Drives headless Chromium over the DevTools protocol (--remote-debugging-pipe: JSON messages
separated by NUL on fds 3 and 4), for tests/t_ui.sh. A page that keeps an EventSource open never
lets --dump-dom's virtual time run out, so the test waits for conditions in the page instead.

usage: cdp.py URL STEP...   steps run in order:
  wait:JS      poll the expression until it is truthy (at most --timeout seconds: exit 1)
  dom:FILE     write document.documentElement.outerHTML
  shot:FILE    write a PNG screenshot (1280x900)
  run:CMD      run a shell command (exit 1 if it fails)
Exit 0 when every step passed. Chromium is killed by pid at the end in any case."""
import base64, json, os, subprocess, sys, tempfile, time

TIMEOUT = float(os.environ.get("CDP_TIMEOUT", "30"))


def main():
    url, steps = sys.argv[1], sys.argv[2:]
    to_chrome_r, to_chrome_w = os.pipe()
    from_chrome_r, from_chrome_w = os.pipe()
    profile = tempfile.mkdtemp(prefix="tem-cdp-")

    def fds():  # chromium reads commands on fd 3 and writes answers on fd 4
        os.dup2(to_chrome_r, 3)
        os.dup2(from_chrome_w, 4)

    p = subprocess.Popen(["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                          "--no-first-run", "--disable-background-networking", "--disable-component-update",
                          "--disable-sync", "--enable-logging=stderr", "--v=0", "--remote-debugging-pipe", "--user-data-dir=" + profile,
                          "--window-size=1280,900", "about:blank"],
                         preexec_fn=fds, pass_fds=(3, 4), stdout=subprocess.DEVNULL,
                         stderr=open(os.environ.get("CDP_LOG", os.devnull), "ab"))
    os.close(to_chrome_r)
    os.close(from_chrome_w)
    out = os.fdopen(to_chrome_w, "wb", buffering=0)
    inp = os.fdopen(from_chrome_r, "rb", buffering=0)
    buf = b""
    seq = [0]

    def call(method, params=None, session=None):
        nonlocal buf
        seq[0] += 1
        msg = {"id": seq[0], "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        out.write(json.dumps(msg).encode() + b"\0")
        while True:
            while b"\0" not in buf:
                chunk = inp.read(1 << 16)
                if not chunk:
                    raise SystemExit("cdp: chromium closed the pipe")
                buf += chunk
            line, buf = buf.split(b"\0", 1)
            m = json.loads(line)
            if m.get("id") == seq[0]:
                if "error" in m:
                    raise SystemExit("cdp: %s: %s" % (method, m["error"]))
                return m["result"]

    try:
        t = call("Target.createTarget", {"url": "about:blank"})
        s = call("Target.attachToTarget", {"targetId": t["targetId"], "flatten": True})["sessionId"]
        call("Emulation.setDeviceMetricsOverride", {"width": 1280, "height": 900, "deviceScaleFactor": 1, "mobile": False}, s)
        call("Page.enable", {}, s)
        call("Page.navigate", {"url": url}, s)

        def ev(expr):
            r = call("Runtime.evaluate", {"expression": expr, "returnByValue": True}, s)
            if "exceptionDetails" in r:
                return None
            return r["result"].get("value")

        for step in steps:
            kind, _, arg = step.partition(":")
            if kind == "wait":
                end = time.monotonic() + TIMEOUT
                while not ev(arg):
                    if time.monotonic() > end:
                        print("cdp: timed out waiting for: " + arg, file=sys.stderr)
                        return 1
                    time.sleep(0.2)
            elif kind == "dom":
                open(arg, "w").write(ev("document.documentElement.outerHTML") or "")
            elif kind == "shot":
                png = call("Page.captureScreenshot", {"format": "png"}, s)["data"]
                open(arg, "wb").write(base64.b64decode(png))
            elif kind == "run":
                if subprocess.call(arg, shell=True) != 0:
                    print("cdp: command failed: " + arg, file=sys.stderr)
                    return 1
            else:
                raise SystemExit("cdp: unknown step " + step)
        return 0
    finally:
        try:
            call("Browser.close")
        except BaseException:
            pass
        try:
            p.wait(timeout=5)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
        subprocess.call(["rm", "-rf", profile])


if __name__ == "__main__":
    sys.exit(main())
