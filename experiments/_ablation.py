"""The harness of the training-step ablations (ablate_resnet20.py, ablate_lenet5.py): jaxconv against PyTorch eager.

A script describes its model in a `Model` (the variants, the networks with switches, the two
frameworks' contenders, the parameter checks) and calls `main(MODEL)`; this module does the rest,
the same for every model:

- Variants. A variant is "full" (the real step) or components joined by "+": network switches
  (the model's `network` table: `no-bn`, `cheap-3x3`, ...) and at most one mode of the step
  (`MODES`: forward-only, no-update), all at once. `parse_variant` merges them and rejects a
  contradiction (two modes, two values of one switch). `--stack A B C` times full, A, A+B, A+B+C:
  each row's change against the previous one attributes the step's time component by component,
  and the gaps telescope (the gap closed at each step plus the last row's gap is the full step's gap).
- Thread settings. Each `--threads` setting runs in a worker subprocess of the script, with the
  setting applied before JAX and PyTorch start (`thread_env`, `_pin`): 1 thread is
  XLA_FLAGS=--xla_cpu_multi_thread_eigen=false (XLA:CPU's intra-op pool off; jax 0.10.2 rejects an
  unknown `--` flag and silently ignores a bare `intra_op_parallelism_threads=1`, so that is not
  passed) with OMP_NUM_THREADS=1 and torch.set_num_threads(1); N > 1 is torch.set_num_threads(N)
  and XLA's default pool, and on Linux the worker is pinned to N cores.
- Timing. In a worker every contender (framework x variant) is built, compiled, warmed up
  (--warmup steps, excluded) and timed in interleaved rounds (`_common.interleaved_rounds`), each
  --batch value in turn; the median round is reported, with the cores each kept busy.
- Output. One table per batch size, headed by the machine; ablate_<name>.csv, .json and .md in --out.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import subprocess
import sys
import time
from typing import Callable

import _common

MODES = {"forward-only": "forward", "no-update": "grad"}  # modes of the step; without one: "train" (forward, backward, Adam)
ONE_THREAD_XLA_FLAG = "--xla_cpu_multi_thread_eigen=false"
FRAMEWORKS = ("jaxconv", "torch")
HEADER = ["threads", "variant", "jaxconv ms", "PyTorch ms", "PyTorch/jaxconv", "Δ jaxconv vs full", "Δ PyTorch vs full",
          "gap ms", "gap closed ms", "cores jaxconv", "cores PyTorch"]
STACK_HEADER = ["Δ jaxconv vs prev row", "Δ PyTorch vs prev row", "gap closed vs prev row"]  # added with --stack


@dataclasses.dataclass(frozen=True)
class Model:
    """What an ablation script says about its model; the harness needs nothing else.

    name: "resnet20" (the files ablate_resnet20.csv/.json/.md). title: the tables' heading.
    script: the script's path (each worker runs it again). doc: its docstring (--help).
    input_shape: one image's (n_H, n_W, n_C); labels are 10 classes.
    network: {component: its network switches}, e.g. {"no-bn": {"bn": False}}; the modes are `MODES`.
    variants / extra_variants: the default --variants, and the others named in the help.
    jaxconv_contender, torch_contender: (Variant, x, y) -> run(n), which runs n steps and waits for them;
    x (m, n_H, n_W, n_C) float32 and y (m,) int32 (jax arrays for jaxconv, numpy for PyTorch).
    param_counts: Variant -> (jaxconv's count, PyTorch's or None without PyTorch).
    check_full_networks: () -> None, raising unless the all-switches-on networks are the real models.
    batches, threads: the defaults of --batch and --threads. quick_note: what --quick compiles.
    """

    name: str
    title: str
    script: str
    doc: str
    input_shape: tuple
    network: dict
    variants: tuple
    extra_variants: tuple
    jaxconv_contender: Callable
    torch_contender: Callable
    param_counts: Callable
    check_full_networks: Callable
    batches: tuple = (128,)
    threads: tuple = (1, 2)
    quick_note: str = ""


@dataclasses.dataclass(frozen=True)
class Variant:
    """A parsed variant: its name as given, the merged network switches, and the mode ("train", "forward", "grad")."""

    name: str
    network: dict
    mode: str = "train"


# ---------------------------------------------------------------------------
# Variants: components joined by "+", and the cumulative ones of a stack.
# ---------------------------------------------------------------------------


def parse_variant(network: dict, name: str) -> Variant:
    """The Variant `name` means: its components' switches merged, its mode; a ValueError naming it if they contradict."""
    if name == "full":
        return Variant("full", {})
    known = ["full", *MODES, *network]
    switches, setter, mode_part, seen = {}, {}, None, []
    for part in name.split("+"):
        if part not in known:
            raise ValueError(f"variant {name!r}: unknown component {part!r}; expected one of {known}, or several joined by '+'.")
        if part == "full":
            raise ValueError(f"variant {name!r}: 'full' is the step with nothing removed and joins nothing; drop it.")
        if part in seen:
            raise ValueError(f"variant {name!r}: {part!r} is named twice; name it once.")
        seen.append(part)
        if part in MODES:
            if mode_part is not None:
                raise ValueError(f"variant {name!r}: {mode_part!r} and {part!r} are both modes of the step and exclude each other; keep one.")
            mode_part = part
            continue
        for key, value in network[part].items():
            if key in switches and switches[key] != value:
                raise ValueError(f"variant {name!r}: {setter[key]!r} and {part!r} set `{key}` to {switches[key]!r} and {value!r}; keep one.")
            switches[key], setter[key] = value, part
    return Variant(name, switches, MODES.get(mode_part, "train"))


def stack_variants(stack) -> list:
    """The cumulative variants of `--stack A B C`: ["full", "A", "A+B", "A+B+C"], in that order."""
    return ["full"] + ["+".join(stack[: i + 1]) for i in range(len(stack))]


def add_stack_deltas(rows, stack) -> None:
    """Give each row of one (threads, batch) its change against the previous row of the stack (None off the stack).

    Δ jaxconv / Δ PyTorch: this row's ms minus the previous row's; gap closed: the previous row's gap minus
    this one's, so the stack's gaps closed plus its last row's gap sum to the full step's gap.
    """
    by_name = {row["variant"]: row for row in rows}
    chain = stack_variants(stack)
    for row in rows:
        row["jaxconv_prev_delta_ms"] = row["torch_prev_delta_ms"] = row["gap_closed_prev_ms"] = None
    for previous, name in zip(chain, chain[1:]):
        row, prev = by_name[name], by_name[previous]
        for key, prev_delta in (("jaxconv_ms", "jaxconv_prev_delta_ms"), ("torch_ms", "torch_prev_delta_ms")):
            row[prev_delta] = row[key] - prev[key] if row[key] is not None and prev[key] is not None else None
        row["gap_closed_prev_ms"] = prev["gap_ms"] - row["gap_ms"] if row["gap_ms"] is not None and prev["gap_ms"] is not None else None


def telescoping_line(rows, stack) -> str:
    """One sentence for one (threads, batch): the stack's gaps closed plus its last row's gap, summed, against the full gap."""
    by_name = {row["variant"]: row for row in rows}
    chain = [by_name[name] for name in stack_variants(stack)]
    head = f"threads {chain[0]['threads']}, batch {chain[0]['batch']}"
    if chain[0]["gap_ms"] is None:
        return f"{head}: no PyTorch, no gap to attribute."
    closed = [row["gap_closed_prev_ms"] for row in chain[1:]]
    total = sum(closed) + chain[-1]["gap_ms"]
    terms = " ".join(f"{c:+.1f}" for c in closed)
    return (f"{head}: gaps closed by the stack's steps ({terms}) plus the last row's gap ({chain[-1]['gap_ms']:+.1f}) "
            f"sum to {total:+.1f} ms; the full step's gap is {chain[0]['gap_ms']:+.1f} ms.")


# ---------------------------------------------------------------------------
# Contender helpers shared by the models.
# ---------------------------------------------------------------------------


def have_torch() -> bool:
    import importlib.util

    return importlib.util.find_spec("torch") is not None


def init_param_count(model, input_shape) -> int:
    """The parameters of jaxconv `model` initialised for (-1, *input_shape), counted from shapes only (`jax.eval_shape`)."""
    import jax

    from jaxconv import count_params

    return count_params(jax.eval_shape(lambda key: model.init(key, (-1, *input_shape))[1], jax.random.key(0)))


def param_counts(variant, build, torch_build, input_shape):
    """(jaxconv's, PyTorch's) parameter count of `variant`'s network: build(**variant.network) and
    torch_build(**variant.network) (PyTorch's None when it is not installed)."""
    n_jaxconv = init_param_count(build(**variant.network), input_shape)
    if not have_torch():
        return n_jaxconv, None
    return n_jaxconv, sum(w.numel() for w in torch_build(**variant.network).parameters())


def torch_contender(variant, x, y, full_step, build):
    """run(n) for PyTorch eager's step of `variant` on the NHWC batch (x, y): full_step(x, y) (benchmark.py's step) for
    "full", else `torch_runner` of build(**variant.network) (the network with switches) under seed 0."""
    import torch

    if variant.name == "full":
        return full_step(x, y)
    torch.manual_seed(0)
    return torch_runner(build(**variant.network), x, y, variant.mode)


def torch_runner(model, x, y, mode):
    """run(n) for PyTorch eager's step of `model` in `mode` on the NHWC batch (x, y) (transposed to NCHW once).

    "train": zero_grad, forward, backward, Adam (fused where this torch has it, else multi-tensor, as
    benchmark.py); "grad": the same without optimizer.step(); "forward": the loss under torch.no_grad(),
    the model in train mode (BatchNorm's running statistics updated).
    """
    import numpy as np
    import torch
    import torch.nn.functional as F

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = model.train().to(device)
    try:
        optimizer = torch.optim.Adam(model.parameters(), 1e-3, fused=True)
    except (RuntimeError, TypeError, ValueError):
        optimizer = torch.optim.Adam(model.parameters(), 1e-3, foreach=True)
    xt = torch.from_numpy(np.ascontiguousarray(np.asarray(x).transpose(0, 3, 1, 2))).to(device)  # (m, n_C, n_H, n_W)
    yt = torch.from_numpy(np.asarray(y).astype(np.int64)).to(device)

    def one_step():
        if mode == "forward":
            with torch.no_grad():
                F.cross_entropy(model(xt), yt)
            return
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(model(xt), yt).backward()
        if mode == "train":
            optimizer.step()

    def run(n):
        for _ in range(n):
            one_step()
        if device.type == "cuda":
            torch.cuda.synchronize()

    run.model = model  # for tests
    return run


# ---------------------------------------------------------------------------
# One thread setting, in this process (the worker).
# ---------------------------------------------------------------------------


def measure(model: Model, args, threads: int, batch: int):
    """Rows of one thread setting and batch: {threads, batch, variant, jaxconv_ms, torch_ms, ...} per variant."""
    import jax
    import numpy as np

    rng = np.random.default_rng(batch)
    x = rng.standard_normal((batch, *model.input_shape), dtype=np.float32)
    y = rng.integers(0, 10, batch).astype(np.int32)
    xj, yj = jax.numpy.asarray(x), jax.numpy.asarray(y)
    frameworks = [("jaxconv", model.jaxconv_contender, xj, yj)] + ([("torch", model.torch_contender, x, y)] if have_torch() else [])
    runs, first_s = {}, {}
    for name in args.variants:
        variant = parse_variant(model.network, name)
        for framework, contender, xs, ys in frameworks:
            run = contender(variant, xs, ys)
            start = time.perf_counter()
            run(1)  # first step: trace + compile + one step
            first_s[(framework, name)] = time.perf_counter() - start
            if args.warmup:
                run(args.warmup)  # warm-up, excluded
            runs[(framework, name)] = run
        print(f"threads {threads}, batch {batch}: {name} built", file=sys.stderr, flush=True)
    cores = {}
    times = _common.interleaved_rounds(runs, args.rounds, args.steps, cores=cores)
    rows = [_row(threads, batch, name, times, cores, first_s) for name in args.variants]
    for row in rows:
        row["jaxconv_params"], row["torch_params"] = model.param_counts(parse_variant(model.network, row["variant"]))
    if args.stack:
        add_stack_deltas(rows, args.stack)
    return rows


def _row(threads, batch, variant, times, cores, first_s):
    """One table row: each framework's median ms (and spread, cores, first step) and the comparisons."""
    import numpy as np

    row = {"threads": threads, "batch": batch, "variant": variant}
    for name in FRAMEWORKS:
        ts = times.get((name, variant))
        full = times.get((name, "full"))
        ms = float(np.median(ts)) * 1e3 if ts else None
        row[f"{name}_ms"] = ms
        row[f"{name}_delta_ms"] = ms - float(np.median(full)) * 1e3 if ts and full else None
        row[f"{name}_min_ms"] = float(np.min(ts)) * 1e3 if ts else None
        row[f"{name}_max_ms"] = float(np.max(ts)) * 1e3 if ts else None
        row[f"{name}_cores"] = float(np.median(cores[(name, variant)])) if ts else None
        row[f"{name}_first_s"] = first_s.get((name, variant))
    both = row["jaxconv_ms"] is not None and row["torch_ms"] is not None
    row["speed_vs_torch"] = row["torch_ms"] / row["jaxconv_ms"] if both else None
    row["gap_ms"] = row["jaxconv_ms"] - row["torch_ms"] if both else None
    have_deltas = both and row["jaxconv_delta_ms"] is not None and row["torch_delta_ms"] is not None
    row["gap_closed_ms"] = row["torch_delta_ms"] - row["jaxconv_delta_ms"] if have_deltas else None
    row["rounds"] = len(times.get(("jaxconv", variant), []))
    return row


def worker(model: Model, args):
    """Apply the thread setting (XLA's comes from the environment the parent set), measure each batch, write the rows."""
    from jaxconv.devices import reuse_host_memory

    threads = args.threads[0]
    model.check_full_networks()
    if args.malloc == "reuse":
        reuse_host_memory()
    if have_torch():
        import torch

        torch.set_num_threads(threads)
    rows = [row for batch in args.batch for row in measure(model, args, threads, batch)]
    print(report(model, rows, machine_line(), args), flush=True)
    _common.write_json(args.worker, {"rows": rows})


# ---------------------------------------------------------------------------
# The tables, and the parent that runs one worker per thread setting.
# ---------------------------------------------------------------------------


def _cell(x, spec="{:.1f}", signed=False):
    return "-" if x is None else ("{:+.1f}" if signed else spec).format(x)


def table_rows(rows, stack=()):
    """The printed cells of each row ('-' where PyTorch is absent or a delta has no reference row)."""
    out = []
    for r in rows:
        cells = [r["threads"], r["variant"], _cell(r["jaxconv_ms"]), _cell(r["torch_ms"]), _cell(r["speed_vs_torch"], "{:.2f}x"),
                 _cell(r["jaxconv_delta_ms"], signed=True), _cell(r["torch_delta_ms"], signed=True), _cell(r["gap_ms"], signed=True),
                 _cell(r["gap_closed_ms"], signed=True), _cell(r["jaxconv_cores"], "{:.2f}"), _cell(r["torch_cores"], "{:.2f}")]
        if stack:
            cells += [_cell(r[k], signed=True) for k in ("jaxconv_prev_delta_ms", "torch_prev_delta_ms", "gap_closed_prev_ms")]
        out.append(cells)
    return out


def header(stack=()):
    return HEADER + (STACK_HEADER if stack else [])


def machine_line() -> str:
    """`_common.machine()` and the PyTorch version."""
    torch_version = "not installed"
    if have_torch():
        import torch

        torch_version = torch.__version__
    return f"{_common.machine()}, torch {torch_version}"


def _by_batch(rows):
    """{batch: its rows, in order}, batches in the order they were measured."""
    groups = {}
    for row in rows:
        groups.setdefault(row["batch"], []).append(row)
    return groups


def _telescoping_lines(rows, stack):
    """One `telescoping_line` per thread setting of one batch's rows."""
    threads = list(dict.fromkeys(row["threads"] for row in rows))
    return [telescoping_line([row for row in rows if row["threads"] == t], stack) for t in threads]


def report(model: Model, rows, machine, args) -> str:
    """The printed report: the machine, then per batch a heading, the table and (with --stack) the telescoping sums."""
    lines = [f"Machine: {machine}"]
    for batch, batch_rows in _by_batch(rows).items():
        lines += [
            f"{model.title}, batch {batch}, median of {args.rounds} interleaved rounds of {args.steps} steps "
            f"(warm-up {args.warmup} excluded); ms per step. Δ: the variant minus its framework's full step. "
            f"gap: jaxconv - PyTorch; gap closed: the full step's gap minus the variant's."
            + (" With --stack: each stacked row against the one before it." if args.stack else ""),
            "",
            _common.format_table(header(args.stack), table_rows(batch_rows, args.stack), align=["r", "l"] + ["r"] * (len(header(args.stack)) - 2)),
        ]
        if args.stack:
            lines += ["", *_telescoping_lines(batch_rows, args.stack)]
        lines.append("")
    return "\n".join(lines[:-1])


def write_outputs(model: Model, args, rows, machine):
    """ablate_<name>.csv (every field of every row), .json (with the machine and the arguments) and .md in --out."""
    stem = os.path.join(args.out, f"ablate_{model.name}")
    fields = list(rows[0])
    _common.write_csv(stem + ".csv", fields, [[r.get(k) for k in fields] for r in rows])
    _common.write_json(stem + ".json", {"machine": machine, "args": vars(args), "rows": rows})
    parts = [f"Machine: {machine}"]
    for batch, batch_rows in _by_batch(rows).items():
        if len(args.batch) > 1:
            parts.append(f"Batch {batch}:")
        parts.append(_common.markdown_table(header(args.stack), table_rows(batch_rows, args.stack)))
        if args.stack:
            parts.append("\n".join(_telescoping_lines(batch_rows, args.stack)))
    with open(stem + ".md", "w") as f:
        f.write("\n\n".join(parts) + "\n")


def thread_env(threads: int) -> dict:
    """The environment of the worker for `threads`: XLA's pool off and one OpenMP thread for 1, defaults otherwise."""
    env = dict(os.environ)
    if threads == 1:
        env["XLA_FLAGS"] = f"{env.get('XLA_FLAGS', '')} {ONE_THREAD_XLA_FLAG}".strip()
        env["OMP_NUM_THREADS"] = "1"
    return env


def _pin(threads: int):
    """A preexec_fn that confines the worker to `threads` cores (Linux), or None. XLA:CPU keeps a pool of one thread
    per core whatever its flags say (the 1-thread worker kept nearly two cores busy without this); pinned, every
    thread of both frameworks shares the cores it is given."""
    if not hasattr(os, "sched_setaffinity") or threads >= len(os.sched_getaffinity(0)):
        return None
    cores = sorted(os.sched_getaffinity(0))[:threads]
    return lambda: os.sched_setaffinity(0, cores)


def worker_args(model: Model, args, threads, path):
    """The command line of the worker for one thread setting (the measurement options passed on as given)."""
    out = [sys.executable, os.path.abspath(model.script), "--worker", path, "--threads", str(threads), "--batch", *map(str, args.batch),
           "--rounds", str(args.rounds), "--steps", str(args.steps), "--warmup", str(args.warmup), "--malloc", args.malloc,
           "--variants", *args.variants, "--out", args.out]
    return out + (["--stack", *args.stack] if args.stack else [])


def run_workers(model: Model, args):
    """Run one worker subprocess per thread setting, in turn; their rows, in order."""
    import json

    rows = []
    for threads in args.threads:
        path = os.path.join(args.out, f"worker_threads{threads}.json")
        proc = subprocess.run(worker_args(model, args, threads, path), env=thread_env(threads), preexec_fn=_pin(threads))
        if proc.returncode != 0:
            raise SystemExit(f"ablate_{model.name}: the worker for --threads {threads} failed (exit {proc.returncode}); its output is above.")
        with open(path) as f:
            rows += json.load(f)["rows"]
        os.remove(path)
    return rows


# ---------------------------------------------------------------------------
# The command line.
# ---------------------------------------------------------------------------


def _variant_type(model: Model):
    """argparse type of a --variants / --stack value: the name, once `parse_variant` accepts it."""

    def check(name):
        try:
            parse_variant(model.network, name)
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e)) from None
        return name

    return check


def add_arguments(p, model: Model):
    """The options every ablation script takes."""
    every = list(model.variants + model.extra_variants)
    p.add_argument("--out", default=f"results/ablate_{model.name}",
                   help=f"folder for ablate_{model.name}.csv, .json and .md (default: results/ablate_{model.name})")
    p.add_argument("--variants", nargs="+", type=_variant_type(model), default=None, metavar="VARIANT",
                   help=f"which variants to time: any of {every}, or several joined by '+' (all at once; at most one of "
                        f"{list(MODES)}) (default: {' '.join(model.variants)}; with --stack: none but the stack's; "
                        f"'full' is always added, the deltas need it)")
    p.add_argument("--stack", nargs="+", type=_variant_type(model), default=[], metavar="VARIANT",
                   help="A B C ...: time full, A, A+B, A+B+C (cumulative) and give each row's change against the one "
                        "before; the gaps closed telescope to the full step's gap")
    p.add_argument("--threads", type=_common.positive_int, nargs="+", default=None,
                   help=f"thread settings, each in its own subprocess (default: {' '.join(map(str, model.threads))}; with --quick: 1); "
                        "1: XLA's intra-op pool off and torch.set_num_threads(1); N > 1: XLA's default pool and torch.set_num_threads(N)")
    p.add_argument("--batch", type=_common.positive_int, nargs="+", default=list(model.batches),
                   help=f"images per step, one or more (default: {' '.join(map(str, model.batches))}); one table per batch size")
    p.add_argument("--rounds", type=_common.positive_int, default=12, help="interleaved rounds; the median round is reported (default: 12)")
    p.add_argument("--steps", type=_common.positive_int, default=2, help="steps per contender per round (default: 2)")
    p.add_argument("--warmup", type=int, default=2, help="steps run after the first, before timing (default: 2)")
    p.add_argument("--malloc", choices=("reuse", "system"), default="reuse",
                   help="reuse: jaxconv.devices.reuse_host_memory() in each worker, as benchmark.py and `jaxconv train` "
                        "(default); system: glibc's own thresholds")
    p.add_argument("--quick", action="store_true",
                   help=f"tiny run for tests: batch 8, 1 round of 1 step, no warm-up, --threads 1 unless given ({model.quick_note})")
    p.add_argument("--worker", metavar="JSON", default=None, help=argparse.SUPPRESS)  # internal: the parent's call of itself


def parse_args(model: Model, argv=None):
    """The arguments, with --quick's values, the default threads and the variants to time (full first, then the stack's)."""
    p = argparse.ArgumentParser(description=model.doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(p, model)
    args = p.parse_args(argv)
    if args.quick:
        args.batch, args.rounds, args.steps, args.warmup = [8], 1, 1, 0
    if args.threads is None:
        args.threads = [1] if args.quick else list(model.threads)
    if "full" in args.stack:
        p.error("argument --stack: 'full' is where every stack starts; name only what each step removes.")
    for name in stack_variants(args.stack)[1:]:
        try:
            parse_variant(model.network, name)
        except ValueError as e:
            p.error(f"argument --stack: {e}")
    given = args.variants if args.variants is not None else ([] if args.stack else list(model.variants))
    args.variants = list(dict.fromkeys(stack_variants(args.stack) + [v for v in given if v != "full"]))
    if args.worker and len(args.threads) != 1:
        p.error("--worker takes exactly one --threads value")
    return args


def main(model: Model, argv=None):
    """The parent: one worker per thread setting, then the table of all of them, printed and written to --out."""
    args = parse_args(model, argv)
    _common.out_dir(args.out)
    if args.worker:
        return worker(model, args)
    start = time.perf_counter()
    rows = run_workers(model, args)
    machine = machine_line()
    print("\nAll thread settings:\n" + report(model, rows, machine, args))
    print(f"({time.perf_counter() - start:.0f} s in all)", file=sys.stderr)
    write_outputs(model, args, rows, machine)
    return rows
