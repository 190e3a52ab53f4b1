"""Helpers shared by the experiment scripts: --out, tables, CSV/Markdown, optional matplotlib.

Not part of the jaxconv package: the scripts put their own folder on sys.path
(Python does that for `python experiments/<script>.py`) and `import _common`.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import sys
import time

import numpy as np

PLOT_HINT = "matplotlib not installed: pip install 'jaxconv[plot]' to get the pictures"


def parser(doc: str, default_out: str) -> argparse.ArgumentParser:
    """An ArgumentParser whose description is the script's docstring, with --out and --no-plot."""
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=default_out, help=f"folder for the files this script writes (default: {default_out})")
    p.add_argument("--no-plot", action="store_true", help="skip the PNG pictures (tables and CSV/Markdown are still written)")
    return p


def positive_int(text: str) -> int:
    """argparse type: a whole number >= 1 (so `--batch-sizes 0` is a usage error, not a ZeroDivisionError)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {value}")
    return value


def out_dir(path: str) -> str:
    """Create the --out folder and return it."""
    os.makedirs(path, exist_ok=True)
    return path


def pyplot(no_plot: bool = False):
    """matplotlib.pyplot with the non-interactive Agg backend, or None (after saying how to get it)."""
    if no_plot:
        print("pictures skipped (--no-plot)")
        return None
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print(PLOT_HINT)
        return None
    return plt


def format_table(header, rows, align=None) -> str:
    """A plain-text table: columns padded to their widest cell; numbers right-aligned by default."""
    cells = [[str(c) for c in header]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    if align is None:
        align = ["r" if rows and isinstance(rows[0][i], (int, float)) else "l" for i in range(len(header))]

    def line(r):
        return "  ".join(c.rjust(w) if a == "r" else c.ljust(w) for c, w, a in zip(r, widths, align)).rstrip()

    rule = "-" * max(len(line(cells[0])), 1)
    return "\n".join([line(cells[0]), rule, *map(line, cells[1:])])


def markdown_table(header, rows) -> str:
    """A GitHub Markdown table ('|' inside cells escaped)."""

    def cell(c):
        return str(c).replace("|", "\\|")

    lines = ["| " + " | ".join(map(cell, header)) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(map(cell, row)) + " |" for row in rows]
    return "\n".join(lines)


def write_csv(path: str, header, rows) -> str:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return path


def write_json(path: str, obj) -> str:
    with open(path, "w") as f:
        json.dump(obj, f, indent=1)
    return path


def cpu_model() -> str:
    """The processor's name (/proc/cpuinfo's "model name" on Linux, else `platform.processor()`), or "unknown CPU"."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def machine() -> str:
    """One line describing where the numbers were measured: the processor, the OS, Python and JAX."""
    import jax

    dev = jax.devices()[0]
    return (
        f"{cpu_model()}, {os.cpu_count()} CPUs, {platform.platform()}, Python {sys.version.split()[0]}, "
        f"jax {jax.__version__} on {dev.platform} ({dev.device_kind})"
    )


def interleaved_rounds(runs: dict, rounds: int, steps: int, seed: int = 0, cores: dict | None = None) -> dict:
    """Seconds per step of each contender, one value per round: {key: [s, ...]}.

    runs: {key: run(n)}, each running n steps and blocking until they are done.
    Every round calls every run(steps) once, in a fresh random (seeded) order, so
    load from other processes, and threads a contender leaves spinning (PyTorch's
    OpenMP pool slowed whichever contender came right after it by 5-10%), hit all
    of them alike. cores: a dict to fill with {key: [cores busy, ...]}, this
    process's CPU time over the wall time of each round (2.0: both of 2 cores
    busy throughout; threads left spinning by the previous contender count too).
    """
    keys, order = list(runs), np.random.default_rng(seed)
    times = {key: [] for key in keys}
    for _ in range(rounds):
        for i in order.permutation(len(keys)):
            start, cpu = time.perf_counter(), time.process_time()
            runs[keys[i]](steps)
            wall = time.perf_counter() - start
            times[keys[i]].append(wall / steps)
            if cores is not None:
                cores.setdefault(keys[i], []).append((time.process_time() - cpu) / wall)
    return times


def fmt(x, digits=3) -> str:
    """Short float formatting for tables: 0.000123 -> 1.23e-04, 12.5 -> 12.5."""
    if isinstance(x, str):
        return x
    if x == 0:
        return "0"
    if abs(x) < 1e-3 or abs(x) >= 1e5:
        return f"{x:.{digits - 1}e}"
    return f"{x:.{digits}g}"
