"""The `jaxconv` command line: `jaxconv summary MODEL`, `jaxconv train ...`."""

from __future__ import annotations

import argparse
import logging
import os
import sys

from jaxconv import interrupts  # imported first by the package: Ctrl-C and SIGTERM give one line and exit 130 / 143


def _shape(text: str) -> tuple:
    try:
        shape = tuple(int(v) for v in text.replace("x", ",").split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a shape like 32,32,1 (n_H,n_W,n_C), got {text!r}") from None
    if len(shape) != 3 or min(shape) < 1:
        raise argparse.ArgumentTypeError(f"expected three positive sizes n_H,n_W,n_C, got {text!r}")
    return shape


def cmd_summary(args) -> int:
    from jaxconv.config import in_channels_kwargs
    from jaxconv.models import INPUT_SHAPES, MODELS
    from jaxconv.summary import format_summary, summary

    input_shape = (1, *args.input_shape) if args.input_shape else INPUT_SHAPES[args.model]
    model = MODELS[args.model](**in_channels_kwargs(args.model, input_shape[3]))  # seed_cnn takes RGB only
    try:
        rows = summary(model, input_shape)
    except ValueError as e:
        print(f"jaxconv summary: error: {e}", file=sys.stderr)
        return 2
    print(f"{args.model}, input {input_shape[1:]}")
    print(format_summary(rows))
    return 0


def _positive_int(text: str) -> int:
    """argparse type: a whole number >= 1 (the shared validator, with argparse's message)."""
    from jaxconv._args import integer

    try:
        return integer(int(text), "value", "jaxconv", minimum=1)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}") from None


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {text!r}") from None
    if not value > 0 or value != value or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a finite number > 0, got {text!r}")
    return value


def cmd_train(args) -> int:
    from jaxconv import parallel
    from jaxconv.devices import compile_cache, cpu_devices, reuse_host_memory
    from jaxconv.loop import Interrupted, NonFiniteLoss, fit

    interrupts.set_message(f"jaxconv train: interrupted before training started; nothing new was saved in {args.out}",
                           again=f"jaxconv train: interrupted again; stopped at once, the last checkpoint in "
                                 f"{args.out} is kept (resume with --resume)")
    reuse_host_memory()  # each step's temporary buffers reused, not page-faulted in afresh (devices.reuse_host_memory)
    if not args.no_compile_cache:
        compile_cache()  # a second run of the same job loads its compiled steps from disk
    try:  # before anything touches a device
        if args.cpu_devices:
            cpu_devices(args.cpu_devices)  # one CPU device per core: single-threaded XLA loops run side by side
        parallel.initialize_distributed(args.coordinator, args.num_processes, args.process_id)
    except (ValueError, RuntimeError) as e:
        print(f"jaxconv train: error: {e}", file=sys.stderr)
        return 2

    config = train_config(args)
    try:
        result = fit(config)
    except (ValueError, FileNotFoundError) as e:  # bad arguments, files or run directory: one line
        print(f"jaxconv train: error: {e}", file=sys.stderr)
        return 2
    except NonFiniteLoss as e:
        print(f"jaxconv train: {e}", file=sys.stderr)
        return 1
    except Interrupted as e:  # Ctrl-C or SIGTERM: where the run stands, not JAX's stack
        print(f"jaxconv train: {e}", file=sys.stderr)
        return interrupts.exit_code(e.signum)
    except KeyboardInterrupt:  # before the first step (loading data, building the model)
        signum = interrupts.pending() or interrupts.SIGNALS[0]
        print(interrupts.describe(f"jaxconv train: interrupted before training started; nothing new was saved in "
                                  f"{config.out}", signum), file=sys.stderr)
        return interrupts.exit_code(signum)
    except OSError as e:  # a full disk, a read-only or vanished --out (WriteError already says what is kept)
        if getattr(e, "filename", None):
            print(f"jaxconv train: error: cannot access `{e.filename}` ({e.strerror}); check --out and free disk space.",
                  file=sys.stderr)
        else:
            print(f"jaxconv train: error: {e}", file=sys.stderr)
        return 1
    interrupts.set_message(f"jaxconv train: interrupted after the run finished; its files in {config.out} are complete")
    if interrupts.pending():  # a signal during the last evaluation, save or plot: the run finished anyway
        interrupts.exit_now(interrupts.pending())
    if not parallel.is_primary():  # process 0 reports for the run
        return 0
    if result.get("epochs_trained") == 0:  # a resume of a finished run: fit said so
        print(f"best test accuracy {result['best_test_accuracy']:.4f} (final {result['final_test_accuracy']:.4f}); "
              f"nothing trained, {result['out']} is unchanged")
        return 0
    print(
        f"best test accuracy {result['best_test_accuracy']:.4f} (final {result['final_test_accuracy']:.4f}) "
        f"in {result['wall_s']:.1f} s, {result['images_per_s']:,.0f} images/s"
    )
    files = ", ".join(result["files"].values())
    print(f"wrote {files} to {result['out']}")
    if "plot" not in result["files"]:
        print("(no curves.png: matplotlib is not installed; pip install 'jaxconv[plot]' to get the plot)")
    return 0


def train_config(args):
    """The `TrainConfig` of parsed `jaxconv train` arguments (not yet validated: `fit` calls its `validate`)."""
    from jaxconv.config import TrainConfig

    return TrainConfig(
        model=args.model, data=args.data, data_dir=args.data_dir, epochs=args.epochs, batch_size=args.batch_size,
        optimizer=args.optimizer, lr=args.lr, schedule=args.schedule, shift=args.shift, impl=args.impl,
        algorithm=args.algorithm, seed=args.seed, out=args.out, resume=args.resume, overwrite=args.overwrite,
        ensemble=args.ensemble, limit=args.limit, checkpoint_every=args.checkpoint_every, progress=not args.no_progress,
        devices=args.devices, dtype=args.dtype,
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="jaxconv", description="Convolutional networks as plain JAX functions.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_summary_command(sub)
    p = _add_train_command(sub)
    _add_run_arguments(p)
    _add_scaling_arguments(p)
    p.set_defaults(func=cmd_train)
    return parser


def _add_summary_command(sub) -> None:
    from jaxconv.models import MODELS

    p = sub.add_parser("summary", help="print a model's layer table (activation shapes, sizes, parameters, MACs)",
                       description="Print the notes' table: activation shape, activation size, # parameters and "
                                   "multiply-accumulates of every layer, computed from shapes alone.")
    p.add_argument("model", choices=sorted(MODELS), help="which model")
    p.add_argument("--input-shape", type=_shape, default=None, metavar="H,W,C",
                   help="per-example input shape (default: the model's own, 32,32,1 for lenet5, 32,32,3 for seed_cnn)")
    p.set_defaults(func=cmd_summary)


def _add_train_command(sub) -> argparse.ArgumentParser:
    """`jaxconv train` and what it trains: model, data, optimizer, schedule, augmentation, convolution, dtype, seed."""
    from jaxconv.conv import ALGORITHMS, IMPLS
    from jaxconv.data import DATASETS
    from jaxconv.config import DEFAULT_LR, DTYPES, OPTIMIZER_HELP, OPTIMIZERS, SCHEDULES, TrainConfig
    from jaxconv.models import MODELS

    d = TrainConfig()
    p = sub.add_parser(
        "train",
        help="train a model (default: LeNet-5 on the bundled digits)",
        description="Train a CNN with a jit-compiled step and optax. Writes config.json, metrics.jsonl, "
                    "checkpoint.npz and (with matplotlib) curves.png to --out.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--model", choices=sorted(MODELS), default=d.model,
                   help="network to train (jaxconv.models.MODELS), built for the data's channels and 10 classes; "
                        "resnet20, inception and mobilenet carry BatchNorm state: trained in train mode (batch "
                        "statistics), evaluated in eval mode (running statistics), state saved in the checkpoint. "
                        "Same defaults for every model; on a CPU resnet20 takes minutes per epoch of the "
                        "digits (docs/benchmarks.md#resnet20-epoch)")
    p.add_argument("--data", choices=sorted(DATASETS), default=d.data,
                   help="; ".join(f"{name}: {entry.help}" for name, entry in sorted(DATASETS.items())))
    p.add_argument("--data-dir", default=None, metavar="PATH", help="folder holding the mnist or cifar10 files")
    p.add_argument("--epochs", type=_positive_int, default=d.epochs, help="passes over the training set")
    p.add_argument("--batch-size", type=_positive_int, default=d.batch_size, help="images per step (m)")
    p.add_argument("--optimizer", choices=list(OPTIMIZERS), default=d.optimizer,
                   help=", ".join(f"{name}: {OPTIMIZER_HELP[name]}" for name in OPTIMIZERS))
    p.add_argument("--lr", type=_positive_float, default=None,
                   help=f"learning rate (default per optimizer: {DEFAULT_LR})")
    p.add_argument("--schedule", choices=list(SCHEDULES), default=d.schedule,
                   help="learning-rate schedule: cosine decay from --lr to 0 over the run (a run extended with "
                        "--resume --epochs gets a new cycle over the added epochs), or constant")
    p.add_argument("--shift", type=int, default=d.shift, metavar="PIXELS",
                   help="augment each training image by a random shift of up to PIXELS (0: off; less than the image size)")
    p.add_argument("--impl", choices=list(IMPLS), default=d.impl,
                   help="convolution implementation: auto picks the fastest for the platform")
    p.add_argument("--algorithm", choices=list(ALGORITHMS), default=d.algorithm,
                   help="the hand-rolled algorithm of every conv (with --impl hand or auto; e.g. im2col: the notes' "
                        "forward and hand-derived backward); auto lets the policy choose per layer")
    p.add_argument("--dtype", choices=list(DTYPES), default=d.dtype,
                   help="compute dtype: bfloat16 runs convs and dense layers in bfloat16 (float32 sums), "
                        "with float32 params, loss and optimizer")
    p.add_argument("--seed", type=int, default=d.seed,
                   help="seed of the initialisation and shuffling: any whole number (the initialisation's key takes "
                        "32 bits: seeds outside [-2**31, 2**31) are folded into them, see jaxconv.steps.key_seed)")
    return p


def _add_run_arguments(p) -> None:
    """How the run goes: where its files go, resuming, ensembles, a subset of the data, checkpoints, progress
    bars and the compile cache."""
    from jaxconv.config import TrainConfig

    d = TrainConfig()
    p.add_argument("--out", default=d.out, metavar="DIR", help="where metrics, config, checkpoint and plot go")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in --out from its checkpoint (same settings and data; a larger --epochs "
                        "extends a finished run)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the run already in --out (without it, a new run into a run's directory is refused)")
    p.add_argument("--ensemble", type=_positive_int, default=d.ensemble, metavar="K",
                   help="train K independently initialised models at once (one vmapped, compiled step)")
    p.add_argument("--limit", type=_positive_int, default=None, metavar="N",
                   help="use only the first N training images (quick runs)")
    p.add_argument("--checkpoint-every", type=int, default=d.checkpoint_every, metavar="STEPS",
                   help="also checkpoint every STEPS steps (0: only at the end of each epoch)")
    p.add_argument("--no-progress", action="store_true",
                   help="no progress bars (logs only; bars are shown only when stderr is a terminal anyway)")
    p.add_argument("--no-compile-cache", action="store_true",
                   help="compile the steps afresh instead of loading them from the on-disk cache "
                        "($XDG_CACHE_HOME/jaxconv/xla or ~/.cache/jaxconv/xla; JAX_COMPILATION_CACHE_DIR overrides)")


def _add_scaling_arguments(p) -> None:
    g = p.add_argument_group("scaling out", "data parallelism over devices and hosts (see docs/scaling.md)")
    g.add_argument("--devices", type=_positive_int, default=None, metavar="N",
                   help="split each batch over N devices (default: all devices of all processes); "
                        "--batch-size must be a multiple of N")
    g.add_argument("--cpu-devices", type=_positive_int, default=None, metavar="N",
                   help="on CPU, expose N devices (e.g. one per core) and split each batch over them; slower than "
                        "one device on 2 cores (docs/benchmarks.md#cpu-devices): a way to test multi-device runs, "
                        "not a speed-up")
    g.add_argument("--coordinator", default=None, metavar="HOST:PORT",
                   help="address of process 0 for a multi-process run (env JAXCONV_COORDINATOR; 'auto' on "
                        "TPU pods, Slurm, Open MPI)")
    g.add_argument("--num-processes", type=_positive_int, default=None, metavar="N",
                   help="number of processes in the run (env JAXCONV_NUM_PROCESSES)")
    g.add_argument("--process-id", type=int, default=None, metavar="I",
                   help="this process's id, 0..N-1 (env JAXCONV_PROCESS_ID)")


def main(argv=None) -> int:
    interrupts.install()  # idempotent; from Python too, cli.main behaves as the command does
    parser = build_parser()
    args = parser.parse_args(argv)
    return args.func(args)


def run() -> None:
    """The `jaxconv` command: `main()`, then an exit that skips tearing the interpreter down.

    Every file a command writes is complete when `main()` returns (checkpoints and metrics are
    written atomically), so what is left of a normal exit is Python freeing its modules and XLA's
    client and thread pools, which takes a noticeable share of a short run
    (docs/benchmarks.md#fast-exit). `_finish` does what of that matters, with public calls: it
    waits for JAX's pending effects, closes the log handlers and flushes the streams; then
    `os._exit`. A multi-process run exits the normal way instead, so that JAX's own exit handler
    leaves `jax.distributed` in order. Errors and interrupts leave through the normal path.
    `main()` itself returns, for callers in Python.
    """
    code = main()
    if not _finish():
        sys.exit(code)
    os._exit(code or 0)


def _finish() -> bool:
    """The cleanup of a normal exit that an `os._exit` needs; False when the process must exit normally."""
    import jax

    if jax.distributed.is_initialized():  # its shutdown belongs after JAX's own backend cleanup, at exit
        return False
    jax.effects_barrier()  # what JAX's exit handler waits for: effects of computations still running
    logging.shutdown()  # flush and close the log handlers
    sys.stdout.flush()
    sys.stderr.flush()
    return True


if __name__ == "__main__":
    run()
