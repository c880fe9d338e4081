"""Request/response spool shared by migplan's sample workloads.

A workload never holds a file open between requests, so nothing host-specific is left in its
file table when CRIU dumps it (a checkpoint may be restored on another host where those paths
differ). Requests arrive as files in the state directory (bind-mounted at /state from the
host's /var/lib/migplan/state/<container>):

    /state/requests/<id>.json    {"op": "report"} or workload-specific ops
    /state/responses/<id>.json   the answer, written atomically (temporary file + rename)

Names starting with "." are ignored (write a request as .ID.tmp, then rename it to ID.json).
The loop looks at /state/requests every `poll` seconds, at once on SIGUSR1. SIGUSR1 also
refreshes /state/report.json (same content as a "report" answer). Request files are removed
once answered. Every answer carries the workload's `boot` token (random, made at start, kept
in memory only): the same token after a move proves the same process continued.
"""
import json
import os
import secrets
import signal
import sys
import time

STATE = os.environ.get("MIGPLAN_STATE_DIR", "/state")
BOOT = secrets.token_hex(8)
STARTED = time.time()


def write_json_atomic(path, obj):
    """Write obj as JSON to path via a temporary file and rename; no fd stays open."""
    tmp = "%s.tmp.%d" % (path, os.getpid())
    data = json.dumps(obj, sort_keys=True, separators=(",", ":")).encode() + b"\n"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)
    os.rename(tmp, path)


def append_line(path, line):
    """Append one line to path, opening and closing it each time."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        os.write(fd, (line + "\n").encode())
    finally:
        os.close(fd)


def log(msg):
    """Diagnostics go to the state directory, not to stdio (stdio is /dev/null)."""
    try:
        append_line(os.path.join(STATE, "workload.log"), "%s %s" % (time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), msg))
    except OSError:
        pass


class Spool:
    """Serves requests with handler(request_dict) -> dict; ticks with tick() every period."""

    def __init__(self, name, handler, report, poll=0.1):
        self.name = name
        self.handler = handler
        self.report = report
        self.poll = poll
        self.requests = os.path.join(STATE, "requests")
        self.responses = os.path.join(STATE, "responses")
        self.served = 0
        for d in (STATE, self.requests, self.responses):
            os.makedirs(d, exist_ok=True)
        signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGUSR1])
        signal.signal(signal.SIGTERM, self._term)
        signal.signal(signal.SIGINT, self._term)

    def _term(self, signum, frame):
        log("%s: signal %d, exiting" % (self.name, signum))
        sys.exit(0)

    def envelope(self, body):
        out = {"workload": self.name, "boot": BOOT, "pid": os.getpid(), "served": self.served, "time": time.time()}
        out.update(body)
        return out

    def write_report(self):
        write_json_atomic(os.path.join(STATE, "report.json"), self.envelope(self.report()))

    def serve_pending(self):
        try:
            names = sorted(n for n in os.listdir(self.requests) if n.endswith(".json") and not n.startswith("."))
        except FileNotFoundError:
            os.makedirs(self.requests, exist_ok=True)
            return
        for n in names:
            path = os.path.join(self.requests, n)
            try:
                with open(path, "rb") as f:
                    raw = f.read()
                req = json.loads(raw or b"{}")
                if not isinstance(req, dict):
                    raise ValueError("a request is a JSON object")
                op = req.get("op", "report")
                if op == "report":
                    body = self.report()
                else:
                    body = self.handler(req)
                self.served += 1
                resp = self.envelope(dict(body, op=op, ok=body.get("ok", True)))
            except Exception as e:  # a bad request gets an error answer, the workload goes on
                self.served += 1
                resp = self.envelope({"ok": False, "error": "%s: %s" % (type(e).__name__, e)})
            write_json_atomic(os.path.join(self.responses, n), resp)
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass

    def run(self, tick=None, period=1.0):
        """Main loop: serve requests, call tick() every period seconds (never catching up)."""
        next_tick = time.monotonic() + period
        while True:
            now = time.monotonic()
            timeout = self.poll if tick is None else max(0.0, min(self.poll, next_tick - now))
            got = signal.sigtimedwait([signal.SIGUSR1], timeout)
            self.serve_pending()
            if got is not None:
                self.write_report()
            now = time.monotonic()
            if tick is not None and now >= next_tick:
                tick()
                # After a long pause (checkpoint, migration) continue at the normal rate.
                next_tick = max(next_tick + period, now + period * 0.5)
