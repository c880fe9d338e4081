"""clock: the stateless sample workload. Every period it appends one line
"<UTC time> <host> <boot> <n>" to /state/clock.log (opened and closed each time) and, with
--stdout, to its stdout. <host> is $MIGPLAN_HOST (set per host when the bundle is installed)
or the UTS host name. Answers "report" requests like every migplan workload.

    clock.py --period 1 [--stdout]
"""
import argparse
import os
import socket
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
sys.path.insert(0, "/app/lib")
import mpworkload  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--period", type=float, default=1.0)
    ap.add_argument("--stdout", action="store_true", help="also print each line on stdout")
    a = ap.parse_args()
    host = os.environ.get("MIGPLAN_HOST") or socket.gethostname()
    state = {"ticks": 0, "last": None}
    path = os.path.join(mpworkload.STATE, "clock.log")

    def tick():
        state["ticks"] += 1
        line = "%s %s %s %d" % (time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), host, mpworkload.BOOT, state["ticks"])
        state["last"] = line
        mpworkload.append_line(path, line)
        if a.stdout:
            print(line, flush=True)

    spool = mpworkload.Spool("clock", lambda req: (_ for _ in ()).throw(ValueError("unknown op %r" % req.get("op"))),
                             lambda: {"host": host, "ticks": state["ticks"], "last": state["last"]})
    tick()
    spool.write_report()
    spool.run(tick=tick, period=a.period)


if __name__ == "__main__":
    main()
