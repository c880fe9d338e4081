"""face: the stateful sample workload. Real OpenCV face detection (Haar cascade) and
recognition (LBPH), trained at start on photographs shipped by Debian's python3-skimage:
the astronaut (Eileen Collins, astronaut.png, found by the Haar cascade) and the faces of
skimage's LFW subset (lfw_subset.npy: the first 100 entries are faces, one identity each
here, named lfw-<i>). Every identity is augmented (rotation, scale, shift, brightness,
noise, mirror; seeded, so the model is deterministic) up to --samples training images in
total. The trained model (its histograms grow with --samples) and the request counter live
in memory only: after a migration the same model answers and the counter continues.

Requests (see mpworkload): {"op": "report"}; {"op": "recognize", "image": "astronaut" |
"lfw-<i>", "variant": N} recognizes a freshly distorted copy of that photo (detection runs
first on the astronaut photo); {"op": "recognize", "path": "/state/requests/x.png"} a file.

    face.py --samples 400 --identities 8 --seed 1
"""
import argparse
import hashlib
import os
import sys
import time

import cv2
import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
sys.path.insert(0, "/app/lib")
import mpworkload  # noqa: E402

SKIMAGE = "/usr/lib/python3/dist-packages/skimage/data"
CASCADE = "/usr/share/opencv4/haarcascades/haarcascade_frontalface_default.xml"
SIZE = 100


def distort(img, rng, strength=1.0):
    """A seeded random variation of a grayscale face image (same size)."""
    h, w = img.shape
    angle = rng.uniform(-12, 12) * strength
    scale = 1.0 + rng.uniform(-0.08, 0.08) * strength
    tx, ty = rng.uniform(-4, 4) * strength, rng.uniform(-4, 4) * strength
    m = cv2.getRotationMatrix2D((w / 2, h / 2), angle, scale)
    m[:, 2] += (tx, ty)
    out = cv2.warpAffine(img, m, (w, h), borderMode=cv2.BORDER_REFLECT)
    out = out.astype(np.float32) * rng.uniform(0.8, 1.2) + rng.uniform(-20, 20) * strength
    out += rng.normal(0, 4 * strength, out.shape)
    if rng.random() < 0.5:
        out = out[:, ::-1]
    return np.clip(out, 0, 255).astype(np.uint8)


class Face:
    def __init__(self, samples, identities, seed):
        t = time.monotonic()
        self.seed = seed
        self.detector = cv2.CascadeClassifier(CASCADE)
        if self.detector.empty():
            raise RuntimeError("cannot load " + CASCADE)
        self.astronaut = cv2.imread(os.path.join(SKIMAGE, "astronaut.png"), cv2.IMREAD_GRAYSCALE)
        if self.astronaut is None:
            raise RuntimeError("cannot read astronaut.png from " + SKIMAGE)
        crop = self.detect(self.astronaut)
        if crop is None:
            raise RuntimeError("the Haar cascade found no face in astronaut.png")
        self.names = ["astronaut"]
        self.faces = [crop]
        lfw = np.load(os.path.join(SKIMAGE, "lfw_subset.npy"))
        for i in range(max(0, identities - 1)):
            f = cv2.resize((lfw[i] * 255).astype(np.uint8), (SIZE, SIZE), interpolation=cv2.INTER_CUBIC)
            self.names.append("lfw-%d" % i)
            self.faces.append(f)
        rng = np.random.default_rng(seed)
        images, labels = [], []
        for n in range(samples):
            label = n % len(self.faces)
            images.append(self.faces[label] if n < len(self.faces) else distort(self.faces[label], rng))
            labels.append(label)
        self.model = cv2.face.LBPHFaceRecognizer_create()
        self.model.train(images, np.array(labels, dtype=np.int32))
        h = hashlib.sha256()
        for hist in self.model.getHistograms():
            h.update(np.ascontiguousarray(hist).tobytes())
        self.model_digest = h.hexdigest()
        self.samples = samples
        self.recognized = 0
        self.train_seconds = round(time.monotonic() - t, 3)
        mpworkload.log("face: trained LBPH on %d samples of %d identities in %.2fs" % (
            samples, len(self.names), self.train_seconds))

    def detect(self, gray):
        found = self.detector.detectMultiScale(gray, 1.1, 5)
        if len(found) == 0:
            return None
        x, y, w, h = max(found, key=lambda r: r[2] * r[3])
        return cv2.resize(gray[y:y + h, x:x + w], (SIZE, SIZE))

    def recognize(self, req):
        variant = int(req.get("variant", 0))
        rng = np.random.default_rng(10_000 + variant)
        detected = None
        if "path" in req:
            gray = cv2.imread(str(req["path"]), cv2.IMREAD_GRAYSCALE)
            if gray is None:
                raise ValueError("cannot read image %r" % req["path"])
            face = self.detect(gray)
            detected = face is not None
            if face is None:
                face = cv2.resize(gray, (SIZE, SIZE))
        else:
            name = str(req.get("image", "astronaut"))
            if name not in self.names:
                raise ValueError("unknown image %r (known: astronaut, lfw-0..lfw-%d)" % (name, len(self.names) - 2))
            if name == "astronaut":
                # a distorted copy of the whole photograph goes through detection first
                big = distort(self.astronaut, rng, strength=0.5)
                face = self.detect(big)
                detected = face is not None
                if face is None:
                    face = distort(self.faces[0], rng, 0.5)
            else:
                face = distort(self.faces[self.names.index(name)], rng, strength=0.7)
        label, distance = self.model.predict(face)
        self.recognized += 1
        return {"label": self.names[label], "distance": round(float(distance), 3), "detected": detected,
                "recognized": self.recognized}

    def report(self):
        return {"samples": self.samples, "identities": len(self.names), "modelDigest": self.model_digest,
                "recognized": self.recognized, "trainSeconds": self.train_seconds, "seed": self.seed}

    def handle(self, req):
        if req.get("op") == "recognize":
            return self.recognize(req)
        raise ValueError("unknown op %r (report, recognize)" % req.get("op"))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--samples", type=int, default=400, help="training-set size after augmentation")
    ap.add_argument("--identities", type=int, default=8, help="astronaut + this many minus one LFW faces")
    ap.add_argument("--seed", type=int, default=1)
    a = ap.parse_args()
    face = Face(a.samples, a.identities, a.seed)
    spool = mpworkload.Spool("face", face.handle, face.report)
    spool.write_report()
    mpworkload.log("face: ready")
    spool.run()


if __name__ == "__main__":
    main()
