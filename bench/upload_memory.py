"""Dataset uploads and the API's memory: RSS before, during and after 4 concurrent uploads of large-pixel
zips, and the validation rate (images/s), for this checkout and for an older commit, side by side.

    python bench/upload_memory.py --against COMMIT

Each side is a real `distill api` process (SQLite, its own data folder) started from its own source tree
(the old one exported with `git archive`, no checkout touched); the two sides run one after the other in
the same run, alternating which goes first per round, so load on the shared machine hits both alike.
RSS is read from /proc: the API process alone, and separately the processes under it as PSS (this
checkout checks uploads in child processes forked from a server that imported the checking code; PSS
splits their shared pages, and their memory is returned when each check ends).
"""

from __future__ import annotations

import argparse
import io
import os
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
import zipfile
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench import common  # noqa: E402

CONCURRENT = 4


def rss_mib(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def pss_mib(pid: int) -> float:
    """Proportional set size: shared pages (a fork server's imports, copy-on-write) split among their users,
    so the children's sum is what they really add."""
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def descendants(pid: int) -> list[int]:
    found, frontier = [], [pid]
    while frontier:
        parent = frontier.pop()
        for task in Path(f"/proc/{parent}/task").glob("*/children"):
            try:
                children = [int(c) for c in task.read_text().split()]
            except OSError:
                continue
            found += children
            frontier += children
    return found


def jpeg(width: int, height: int, seed: int) -> bytes:
    """A photo-like JPEG: a gradient with mild noise (compresses like a picture, decodes at full cost)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    ramp = np.linspace(0, 255, width, dtype=np.float32)[None, :, None]
    pixels = np.clip(ramp + rng.normal(0, 8, (height, 1, 3)), 0, 255).astype(np.uint8)
    pixels = np.broadcast_to(pixels, (height, width, 3))
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(pixels), "RGB").save(buffer, format="JPEG", quality=80)
    return buffer.getvalue()


def image_zip(count: int, width: int, height: int) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as archive:
        for i in range(count):
            archive.writestr(f"train/{'ab'[i % 2]}/{i}.jpg", jpeg(width, height, i))
            if i < 2:
                archive.writestr(f"test/{'ab'[i % 2]}/{i}.jpg", jpeg(width, height, 1000 + i))
    return out.getvalue()


class Api:
    """One `distill api` process from `root` on a free port, with its own data folder."""

    def __init__(self, root: Path, home: Path, extra_env: dict[str, str]) -> None:
        import socket

        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        env = {key: value for key, value in os.environ.items() if not key.startswith(("DISTILL_", "DATABASE_URL",
                                                                                       "BROKER_URL"))}
        env.update(PYTHONPATH=str(root), DISTILL_HOME=str(home), OMP_NUM_THREADS="1", **extra_env)
        home.mkdir(parents=True, exist_ok=True)
        self.log = (home / "api.log").open("wb")
        self.process = subprocess.Popen([sys.executable, "-c", "from cli.main import main; main()", "api",
                                         "--port", str(self.port)], cwd=root, env=env, stdout=self.log,
                                        stderr=subprocess.STDOUT)
        self.url = f"http://127.0.0.1:{self.port}"
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.url}/healthz").status_code == 200:
                    return
            except httpx.TransportError:
                time.sleep(0.2)
        raise RuntimeError(f"the API from {root} did not start")

    def upload(self, data: bytes, name: str) -> tuple[int, float]:
        started = time.perf_counter()
        response = httpx.post(f"{self.url}/v1/datasets", files={"file": (name, data)}, timeout=600)
        return response.status_code, time.perf_counter() - started

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=30)
        self.log.close()


def measure(root: Path, home: Path, big: bytes, rate_zip: bytes, rate_images: int) -> dict[str, Any]:
    api = Api(root, home, {"DISTILL_UPLOAD_CHECKS": str(CONCURRENT)})
    try:
        status, _ = api.upload(image_zip(4, 64, 48), "warm.zip")
        assert status == 201, status
        time.sleep(1.0)
        baseline = rss_mib(api.process.pid)
        peak, children_peak, done = baseline, 0.0, threading.Event()

        def sample() -> None:
            nonlocal peak, children_peak
            while not done.is_set():
                peak = max(peak, rss_mib(api.process.pid))
                children_peak = max(children_peak, sum(pss_mib(c) for c in descendants(api.process.pid)))
                time.sleep(0.02)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        results: list[tuple[int, float]] = []
        threads = [threading.Thread(target=lambda i=i: results.append(api.upload(big, f"big{i}.zip")))
                   for i in range(CONCURRENT)]
        started = time.perf_counter()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        concurrent_s = time.perf_counter() - started
        done.set()
        sampler.join()
        time.sleep(2.0)
        after = rss_mib(api.process.pid)
        rate_status, rate_s = api.upload(rate_zip, "rate.zip")
        return {"baseline_mib": baseline, "peak_mib": peak, "after_mib": after, "children_peak_mib": children_peak,
                "statuses": sorted(status for status, _ in results), "concurrent_s": concurrent_s,
                "rate_status": rate_status, "rate_s": rate_s, "images_per_s": rate_images / rate_s}
    finally:
        api.stop()


def export_commit(commit: str, into: Path) -> Path:
    """The tree of `commit` as plain files (git archive): the older side runs from there."""
    archive = subprocess.run(["git", "archive", "--format=tar", commit], cwd=common.REPO_ROOT, check=True,
                             capture_output=True).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(into, filter="data")
    return into


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--against", required=True, metavar="COMMIT", help="the older side")
    parser.add_argument("--side", type=int, default=6000, help="pixels a side of the large images")
    parser.add_argument("--per-zip", type=int, default=4, help="large images per zip")
    parser.add_argument("--rate-images", type=int, default=60, help="images of the validation-rate zip")
    parser.add_argument("--rounds", type=int, default=1)
    args = parser.parse_args()
    big = image_zip(args.per_zip, args.side, args.side)
    rate_zip = image_zip(args.rate_images, 1600, 1200)
    rate_total = args.rate_images + 2
    runs: dict[str, list[dict[str, Any]]] = {"before": [], "after": []}
    with tempfile.TemporaryDirectory(prefix="upload-bench-") as scratch:
        old_root = export_commit(args.against, Path(scratch) / "old")
        roots = {"before": old_root, "after": common.REPO_ROOT}
        for round_index in range(args.rounds):
            order = ["before", "after"] if round_index % 2 == 0 else ["after", "before"]
            for side in order:
                result = measure(roots[side], Path(scratch) / f"home-{side}-{round_index}", big, rate_zip, rate_total)
                print(side, result, flush=True)
                runs[side].append(result)

    def row(side: str) -> list[Any]:
        last = runs[side]
        return [side, f"{common.mean([r['baseline_mib'] for r in last]):.0f}",
                f"{common.mean([r['peak_mib'] for r in last]):.0f}", f"{common.mean([r['after_mib'] for r in last]):.0f}",
                f"{common.mean([r['children_peak_mib'] for r in last]):.0f}",
                " ".join(str(s) for s in last[-1]["statuses"]), f"{common.mean([r['concurrent_s'] for r in last]):.1f}",
                f"{common.mean([r['images_per_s'] for r in last]):.1f}"]

    ratio = common.mean([r["images_per_s"] for r in runs["after"]]) / common.mean(
        [r["images_per_s"] for r in runs["before"]])
    common.write_results(
        "upload_memory", "Dataset uploads: API memory and validation rate, before vs after",
        {"against": args.against, "large": f"{args.per_zip} x {args.side}x{args.side} JPEG per zip",
         "concurrent": CONCURRENT, "rate_zip": f"{rate_total} x 1600x1200 JPEG", "rounds": args.rounds},
        [("API RSS (MiB) around 4 concurrent uploads, and the validation rate", [
            "side", "baseline", "peak during", "after (+2 s)", "checking processes peak (PSS)", "statuses",
            "4 uploads (s)", "validation (images/s)"], [row("before"), row("after")])],
        runs,
        notes=[f"validation rate after/before: {ratio:.2f}x (same run; load on the shared cores hits both sides)"],
    )


if __name__ == "__main__":
    main()
