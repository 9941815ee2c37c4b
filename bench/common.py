"""What the three benchmarks share: timing statistics, tables, result files, machine facts, the CIFAR cache.

Benchmarks are scripts, run on demand (never collected by pytest). Every script
prints its table, then writes `bench/results/<name>.json` (numbers + settings +
machine) and `bench/results/<name>.md` (the same table as Markdown, ready to
paste into bench/README.md).
"""

from __future__ import annotations

import json
import logging
import os
import platform
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
RESULTS_DIR = BENCH_DIR / "results"
CACHE_DIR = BENCH_DIR / ".cache"  # git-ignored: teacher weights, the CIFAR array file
CIFAR_TREE = REPO_ROOT / "var" / "datasets" / "cifar10-jpeg"
CIFAR_NPZ = CACHE_DIR / "cifar10.npz"

if str(REPO_ROOT) not in sys.path:  # `python bench/x.py` from the repo root imports core/ like the tests do
    sys.path.insert(0, str(REPO_ROOT))

log = logging.getLogger("bench")


def setup_logging(verbose: bool = False) -> None:
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    log.setLevel(logging.INFO)


# --- statistics ------------------------------------------------------------------------------------------


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values)) if values else float("nan")


def spread(values: Sequence[float]) -> float:
    """Sample standard deviation (0 for a single value): the +- in every table."""
    return float(statistics.stdev(values)) if len(values) > 1 else 0.0


def mean(values: Sequence[float]) -> float:
    return float(statistics.fmean(values)) if values else float("nan")


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in [0, 100]); no interpolation, so p99 is a latency someone really saw."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, min(len(ordered), int(-(-q * len(ordered) // 100))))
    return float(ordered[rank - 1])


class Stopwatch:
    """`with Stopwatch() as sw: ...; sw.seconds` - wall time by perf_counter."""

    def __enter__(self) -> Stopwatch:
        self._start = time.perf_counter()
        self.seconds = 0.0
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds = time.perf_counter() - self._start


# --- machine ---------------------------------------------------------------------------------------------


def machine_info() -> dict[str, Any]:
    """What a reader needs to compare numbers across machines."""
    info: dict[str, Any] = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "cpu_model": _cpu_model(),
    }
    try:
        import torch

        info["torch"] = torch.__version__
        info["torch_threads"] = torch.get_num_threads()
        info["cuda"] = torch.cuda.is_available()
    except ImportError:  # the service benchmark's client side does not need torch
        pass
    try:
        info["load_avg_1m"] = round(os.getloadavg()[0], 2)
    except OSError:
        pass
    return info


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far (Linux ru_maxrss is in KiB)."""
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 1024.0 if sys.platform != "darwin" else peak / (1024.0 * 1024.0)


# --- tables and result files -----------------------------------------------------------------------------


def format_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A fixed-width text table for the terminal."""
    cells = [[_cell(v) for v in row] for row in rows]
    widths = [max(len(str(h)), *(len(r[i]) for r in cells)) if cells else len(str(h)) for i, h in enumerate(headers)]
    line = lambda values: "  ".join(str(v).ljust(w) for v, w in zip(values, widths))  # noqa: E731
    return "\n".join([line(headers), line(["-" * w for w in widths]), *(line(r) for r in cells)])


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    out = ["| " + " | ".join(str(h) for h in headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    out += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in rows]
    return "\n".join(out)


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3f}" if abs(value) < 1000 else f"{value:.0f}"
    return "" if value is None else str(value)


def pm(values: Sequence[float], scale: float = 1.0, digits: int = 3) -> str:
    """'mean +- spread' of `values * scale`."""
    scaled = [v * scale for v in values]
    return f"{mean(scaled):.{digits}f} ± {spread(scaled):.{digits}f}"


def write_results(
    name: str,
    title: str,
    settings: dict[str, Any],
    tables: Sequence[tuple[str, Sequence[str], Sequence[Sequence[Any]]]],
    data: dict[str, Any],
    notes: Sequence[str] = (),
    command: str | None = None,
) -> tuple[Path, Path]:
    """Print every table and write `results/<name>.json` and `results/<name>.md`.

    `tables` is a list of (caption, headers, rows); `data` is the raw numbers behind them.
    """
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    command = command or "python " + " ".join(["bench/" + Path(sys.argv[0]).name, *sys.argv[1:]])
    machine = machine_info()
    settings_line = ", ".join(f"{k}={v}" for k, v in settings.items())

    print(f"\n== {title} ==")
    print(f"command: {command}")
    print(f"settings: {settings_line}")
    for caption, headers, rows in tables:
        print(f"\n{caption}\n{format_table(headers, rows)}")
    for note in notes:
        print(f"- {note}")

    md = [f"## {title}", "", f"Command: `{command}`", "", f"Settings: {settings_line}", ""]
    md.append(
        f"Machine: {machine['cpu_model']}, {machine['cpu_count']} CPUs, Python {machine['python']}"
        + (f", torch {machine['torch']}" if "torch" in machine else "")
        + f", load {machine.get('load_avg_1m', '?')} at the end"
    )
    for caption, headers, rows in tables:
        md += ["", f"**{caption}**", "", markdown_table(headers, rows)]
    if notes:
        md += ["", *(f"- {n}" for n in notes)]
    md_path = RESULTS_DIR / f"{name}.md"
    md_path.write_text(repo_relative("\n".join(md) + "\n"))

    json_path = RESULTS_DIR / f"{name}.json"
    payload = {
        "name": name,
        "title": title,
        "command": command,
        "settings": settings,
        "machine": machine,
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "tables": [{"caption": c, "headers": list(h), "rows": [[_cell(v) for v in r] for r in rows]}
                   for c, h, rows in tables],
        "notes": list(notes),
        "data": data,
    }
    json_path.write_text(repo_relative(json.dumps(payload, indent=2, default=str) + "\n"))
    print(f"\nwrote {json_path.relative_to(REPO_ROOT)} and {md_path.relative_to(REPO_ROOT)}")
    return json_path, md_path


def repo_relative(text: str) -> str:
    """`text` with this checkout's absolute path cut from every path in it: results are committed, and a
    machine's folders are nobody else's business (nor the same on the next machine)."""
    for root in {str(REPO_ROOT.resolve()), str(REPO_ROOT)}:
        text = text.replace(root + "/", "")
    return text


# --- data ------------------------------------------------------------------------------------------------


def cifar_npz(tree: Path = CIFAR_TREE, target: Path = CIFAR_NPZ) -> Path:
    """The CIFAR-10 ImageFolder tree as one uint8 .npz (x, y, x_test, y_test), built once and cached.

    Decoding 60,000 JPEGs takes minutes; loading the array file takes about a second.
    The class order is the tree's sorted folder names, as an ImageFolder loader would give.
    """
    if target.exists():
        return target
    import numpy as np
    from PIL import Image

    if not (tree / "train").is_dir() or not (tree / "test").is_dir():
        raise SystemExit(
            "CIFAR-10 not found: extract the data set's cifar10-jpeg.tar.gz into var/datasets/ "
            "(it must hold var/datasets/cifar10-jpeg/{train,test}/<class>/*.jpg)"
        )
    names = sorted(p.name for p in (tree / "train").iterdir() if p.is_dir())
    arrays: dict[str, np.ndarray] = {}
    for split, x_key, y_key in (("train", "x", "y"), ("test", "x_test", "y_test")):
        files = [(f, label) for label, name in enumerate(names) for f in sorted((tree / split / name).glob("*.jpg"))]
        images = np.empty((len(files), 32, 32, 3), dtype=np.uint8)
        for i, (file, _) in enumerate(files):
            with Image.open(file) as img:
                img = img.convert("RGB")
                if img.size != (32, 32):
                    img = img.resize((32, 32), Image.BILINEAR)
                images[i] = np.asarray(img, dtype=np.uint8)
        arrays[x_key] = images
        arrays[y_key] = np.asarray([label for _, label in files], dtype=np.int64)
        log.info("decoded %d %s images", len(files), split)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(".tmp.npz")
    np.savez(tmp, class_names=np.asarray(names), **arrays)
    tmp.replace(target)
    return target


def cifar_class_names(path: Path = CIFAR_NPZ) -> list[str]:
    import numpy as np

    with np.load(path, allow_pickle=False) as arrays:
        return [str(n) for n in arrays["class_names"]]


def test_subset_npz(size: int, seed: int = 0, source: Path = CIFAR_NPZ) -> Path:
    """The train split and a fixed, class-stratified `size`-image test subset, as their own cached .npz.

    Fixed by `seed`, so every row of the quality table is scored on the same images.
    """
    import numpy as np

    target = source.with_name(f"{source.stem}-test{size}-seed{seed}.npz")
    if target.exists():
        return target
    with np.load(source, allow_pickle=False) as arrays:
        data = {key: arrays[key] for key in arrays.files}
    labels = data["y_test"]
    classes = np.unique(labels)
    per_class = size // len(classes)
    rng = np.random.default_rng(seed)
    keep = np.sort(np.concatenate([rng.permutation(np.flatnonzero(labels == c))[:per_class] for c in classes]))
    data["x_test"], data["y_test"] = data["x_test"][keep], labels[keep]
    tmp = target.with_suffix(".tmp.npz")
    np.savez(tmp, **data)
    tmp.replace(target)
    return target


def small_npz(train_per_class: int, test_size: int, seed: int = 0, source: Path = CIFAR_NPZ) -> Path:
    """A seeded few-shot CIFAR array file (`train_per_class` per class, `test_size` test images).

    For the speed benchmarks: loading it does not blow up memory, so peak RSS reflects training.
    """
    import numpy as np

    target = source.with_name(f"{source.stem}-train{train_per_class}pc-test{test_size}-seed{seed}.npz")
    if target.exists():
        return target
    with np.load(cifar_npz() if source == CIFAR_NPZ else source, allow_pickle=False) as arrays:
        data = {key: arrays[key] for key in arrays.files}
    rng = np.random.default_rng(seed)
    keep = np.sort(np.concatenate([
        rng.permutation(np.flatnonzero(data["y"] == c))[:train_per_class] for c in np.unique(data["y"])
    ]))
    data["x"], data["y"] = data["x"][keep], data["y"][keep]
    keep_test = np.sort(rng.permutation(len(data["y_test"]))[:test_size])
    data["x_test"], data["y_test"] = data["x_test"][keep_test], data["y_test"][keep_test]
    tmp = target.with_suffix(".tmp.npz")
    np.savez(tmp, **data)
    tmp.replace(target)
    return target


def slug(text: str) -> str:
    """A folder-safe name: letters and digits, runs of anything else as one dash."""
    out = "".join(c if c.isalnum() else "-" for c in text)
    while "--" in out:
        out = out.replace("--", "-")
    return out.strip("-")


def set_threads(threads: int) -> None:
    """Pin torch's intra-op threads (and the BLAS pools, when set before import) for comparable timings."""
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ.setdefault(var, str(threads))
    import torch

    torch.set_num_threads(threads)
