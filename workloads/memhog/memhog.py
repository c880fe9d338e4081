"""memhog: holds N MiB of deterministic pseudo-random memory and rewrites a fraction of it
every period, deterministically, so that its memory is a pure function of (seed, size, mode,
counter). A "report" request answers the SHA-256 of the memory as it is (`digest`) and as it
must be for the current counter, recomputed from the seed (`expected`); `intact` says they are
equal. After a migration: same `boot` token, `counter` continued, `intact` true.

    memhog.py --mb 256 --mode incompressible|half --fraction 0.01 --period 1 --seed 1

Modes: incompressible (random bytes), half (each 4 KiB page: 2 KiB random + 2 KiB zeros,
so zlib/gzip shrink it to about half).
"""
import argparse
import hashlib
import os
import random
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
sys.path.insert(0, "/app/lib")
import mpworkload  # noqa: E402

PAGE = 4096
MiB = 1 << 20


def fill(buf, off, length, seed, mode):
    """Deterministic content of buf[off:off+length] for a given seed."""
    rng = random.Random(seed)
    if mode == "incompressible":
        buf[off:off + length] = rng.randbytes(length)
        return
    half = PAGE // 2
    rand = rng.randbytes(length // 2)
    mv = memoryview(buf)
    zero = bytes(half)
    for i in range(length // PAGE):
        p = off + i * PAGE
        mv[p:p + half] = rand[i * half:(i + 1) * half]
        mv[p + half:p + PAGE] = zero


class MemHog:
    def __init__(self, mb, mode, fraction, seed):
        self.size = mb * MiB
        self.mode = mode
        self.seed = seed
        # Regions of whole pages; tick k rewrites region (k - 1) % regions.
        pages = self.size // PAGE
        self.regions = max(1, min(pages, int(round(1.0 / fraction)) if fraction > 0 else 1))
        self.region_pages = pages // self.regions
        self.region_size = self.region_pages * PAGE
        self.counter = 0
        self.mem = bytearray(self.size)
        t = time.monotonic()
        fill(self.mem, 0, self.size, self.initial_seed(), mode)
        mpworkload.log("memhog: %d MiB %s filled in %.2fs, %d regions of %d bytes" % (
            mb, mode, time.monotonic() - t, self.regions, self.region_size))

    def initial_seed(self):
        return "memhog/%d/%s/initial" % (self.seed, self.mode)

    def tick_seed(self, k):
        return "memhog/%d/%s/tick/%d" % (self.seed, self.mode, k)

    def tick(self):
        self.counter += 1
        r = (self.counter - 1) % self.regions
        fill(self.mem, r * self.region_size, self.region_size, self.tick_seed(self.counter), self.mode)

    def expected_digest(self):
        """SHA-256 the memory must have at the current counter, recomputed from the seed."""
        h = hashlib.sha256()
        init = bytearray(self.size)
        fill(init, 0, self.size, self.initial_seed(), self.mode)
        scratch = bytearray(self.region_size)
        for r in range(self.regions):
            off = r * self.region_size
            # last tick k <= counter with (k - 1) % regions == r
            k = 0
            if self.counter >= r + 1:
                k = r + 1 + ((self.counter - (r + 1)) // self.regions) * self.regions
            if k >= 1:
                fill(scratch, 0, self.region_size, self.tick_seed(k), self.mode)
                init[off:off + self.region_size] = scratch
        h.update(init)
        return h.hexdigest()

    def report(self):
        t = time.monotonic()
        digest = hashlib.sha256(self.mem).hexdigest()
        t_digest = time.monotonic() - t
        expected = self.expected_digest()
        return {
            "counter": self.counter, "digest": digest, "expected": expected,
            "intact": digest == expected, "sizeBytes": self.size, "mode": self.mode,
            "seed": self.seed, "regions": self.regions, "digestSeconds": round(t_digest, 3),
        }


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mb", type=int, default=64, help="MiB of memory to hold")
    ap.add_argument("--mode", choices=["incompressible", "half"], default="incompressible")
    ap.add_argument("--fraction", type=float, default=0.01, help="fraction rewritten per period")
    ap.add_argument("--period", type=float, default=1.0, help="seconds between rewrites")
    ap.add_argument("--seed", type=int, default=1)
    a = ap.parse_args()
    hog = MemHog(a.mb, a.mode, a.fraction, a.seed)
    spool = mpworkload.Spool("memhog", lambda req: (_ for _ in ()).throw(ValueError("unknown op %r" % req.get("op"))), hog.report)
    spool.write_report()
    mpworkload.log("memhog: ready")
    spool.run(tick=hog.tick, period=a.period)


if __name__ == "__main__":
    main()
