"""Checkpoints of a training run: what is saved, what a resume must agree on, and how a run continues.

The checkpoint is the one source of truth. Each epoch is evaluated before it is
saved, and its metrics line is saved inside the checkpoint (`save`); then
`metrics.jsonl` is rewritten from that history. A kill at any moment loses no
line: a resume rebuilds `metrics.jsonl` from the checkpoint (`history_of`) and
continues bit-identically to an uninterrupted run.

A resume checks the config (`RESUME_KEYS`) and a fingerprint of the data
(`plan`). A finished run can be extended with a larger `epochs`: with the
cosine schedule the added epochs get a new cosine cycle (a warm restart), and
`schedule_epochs` lists where each cycle ends. An unfinished run must first
finish its own epochs.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Optional

import numpy as np

from jaxconv import checkpoint, parallel

# The keys a checkpoint must agree on to be resumed: a different model, data
# set, optimizer or compute dtype would silently train something else. `epochs` may grow (to
# extend a finished run); `data_fingerprint` is checked first, with its own message.
RESUME_KEYS = ("model", "data", "data_fingerprint", "impl", "optimizer", "lr", "schedule", "shift", "batch_size", "seed",
               "ensemble", "limit", "dtype")
LATER_KEYS = ("dtype",)  # resume keys that older checkpoints do not store: checked only where they are stored


def resume_keys(record: dict, stored: Optional[dict] = None) -> dict:
    """The settings of a run's config record (config.json's dict) that a resume must agree on; with `stored`
    (the checkpoint's config), without the LATER_KEYS it does not hold."""
    return {k: record[k] for k in RESUME_KEYS if k not in LATER_KEYS or stored is None or k in stored}


def checkpoint_config(record: dict) -> dict:
    """The config a checkpoint stores: the resume keys, the epochs, where each cosine cycle ends and the data's folder."""
    return {**resume_keys(record), "epochs": record["epochs"], "schedule_epochs": record["schedule_epochs"],
            "data_dir": record["data_dir"]}


def read_header(config) -> Optional[dict]:
    """The header of the checkpoint in `config.out` when `config.resume`, else None; refuses a missing one."""
    if not config.resume:
        return None
    path = os.path.join(config.out, "checkpoint.npz")
    if not os.path.exists(path):
        raise FileNotFoundError(f"train: --resume found no checkpoint at {path}; run without --resume first.")
    return checkpoint.read_header(path)


def recorded_lr(header: Optional[dict]):
    """The learning rate a checkpoint's run was trained with (None when there is no checkpoint or no record)."""
    return None if header is None else (header.get("config") or {}).get("lr")


def plan(config, header: dict, steps_per_epoch: int, ckpt_path: str):
    """(schedule_epochs, log line) for resuming from a checkpoint header; refuses data and epoch mismatches."""
    stored = header.get("config") or {}
    settings = {k: v for k, v in dataclasses.asdict(config).items() if k in RESUME_KEYS and k != "data_fingerprint"
                and (k not in LATER_KEYS or k in stored)}
    checkpoint.check_config(stored, {**settings, "lr": config.learning_rate}, ckpt_path, "train")
    if "data_fingerprint" in stored and stored["data_fingerprint"] != config.data_fingerprint:
        raise ValueError(
            f"train: the checkpoint `{ckpt_path}` was trained on other data (--data {stored.get('data')} from "
            f"{stored.get('data_dir')!r}, fingerprint {stored['data_fingerprint']}) than this run's --data "
            f"{config.data} from {config.data_dir!r} (fingerprint {config.data_fingerprint}); resume with the same "
            f"data, or start a new run in another --out."
        )
    before = stored.get("epochs", config.epochs)
    cycles = list(stored.get("schedule_epochs") or [before])
    finished = header["step"] >= before * steps_per_epoch
    if config.epochs == before:
        return cycles, ""
    if config.epochs > before and finished:
        return cycles + [config.epochs], (
            f"extending the finished {before}-epoch run to {config.epochs} epochs"
            + (f" (a new cosine cycle from lr {config.learning_rate} over the added epochs)" if config.schedule == "cosine" else "")
        )
    if config.epochs > before:
        raise ValueError(
            f"train: the run in `{config.out}` has not finished its {before} epochs (checkpoint at step "
            f"{header['step']} of {before * steps_per_epoch}); resume it with --epochs {before} first, then extend it "
            f"with a larger --epochs."
        )
    raise ValueError(
        f"train: `--epochs` {config.epochs} is fewer than the {before} epochs of the run in `{config.out}`; resume with "
        f"--epochs {before}, or more to extend a finished run."
    )


def history_of(state: dict, metrics_path: str, step: int) -> list:
    """The metrics history a checkpoint carries (or, for checkpoints without one, metrics.jsonl's lines up to step)."""
    metadata = state.get("metadata") or {}
    if "history" in metadata:
        return list(metadata["history"])
    if not os.path.exists(metrics_path):
        return []
    with open(metrics_path) as f:
        lines = [line for line in f if line.strip()]
    history = []
    for i, line in enumerate(lines, 1):
        try:
            history.append(json.loads(line))
        except json.JSONDecodeError as e:
            raise ValueError(
                f"train: `{metrics_path}` is damaged at line {i} ({e}); delete it to resume without the earlier "
                f"epochs' metrics lines (the checkpoint itself is fine)."
            ) from None
    return [h for h in history if h.get("step", 0) <= step]


def remove_temporaries(*paths) -> list:
    """Remove the temporary files a killed save of any of `paths` left (we hold the run's lock); the removed."""
    return [name for path in paths for name in checkpoint.remove_temporaries(path)]


def load(ckpt_path: str, metrics_path: str, like: tuple, resume_keys: dict, stateful: bool, steps_per_epoch: int):
    """(params, opt_state, state, step, history, epoch losses) from the checkpoint, checked against `resume_keys`.

    like: (params, opt_state, state) of a freshly initialised run, whose structure the checkpoint must match.
    The epoch losses are `epoch_losses_of`'s.
    """
    params, opt_state, state = like
    loaded = checkpoint.load_checkpoint(ckpt_path, params_like=params, opt_state_like=opt_state, config=resume_keys,
                                        state_like=state)
    step = int(loaded["step"])
    state = loaded.get("state") if stateful else None
    return (loaded["params"], loaded["opt_state"], state, step, history_of(loaded, metrics_path, step),
            epoch_losses_of(loaded, step, steps_per_epoch))


def epoch_losses_of(state: dict, step: int, steps_per_epoch: int) -> Optional[list]:
    """The losses of the steps already taken in the epoch a checkpoint stopped in, one NumPy array per step.

    [] at an epoch's end; None for a mid-epoch checkpoint that does not carry them (saved by an older
    jaxconv): the resumed epoch's train_loss then covers only the steps taken after the resume.
    """
    done = step % steps_per_epoch
    if done == 0:
        return []
    saved = (state.get("metadata") or {}).get("epoch_losses")
    if not isinstance(saved, dict) or len(saved.get("values") or []) != done:
        return None
    return [np.asarray(v, dtype=saved["dtype"]) for v in saved["values"]]


def save(ckpt_path: str, weights: tuple, step: int, key, config: dict, history: list, primary: bool,
         epoch_losses=None) -> None:
    """Checkpoint (params, opt_state, state) at `step` with the run's key, config and metrics history.

    epoch_losses: mid-epoch, the losses of the epoch's steps so far (NumPy arrays, one per step), kept
    exactly (JSON numbers round-trip a float32) so that a resume computes the uninterrupted epoch's mean.
    Every process takes part in gathering the weights to the host; process 0 writes them.
    """
    host_params, host_opt_state, host_state = parallel.to_host(weights)
    metadata = {"history": history}
    if epoch_losses:
        metadata["epoch_losses"] = {"dtype": str(np.asarray(epoch_losses[0]).dtype),
                                    "values": [np.asarray(v).tolist() for v in epoch_losses]}
    if primary:
        checkpoint.save_checkpoint(ckpt_path, params=host_params, opt_state=host_opt_state, step=step, key=key,
                                   config=config, metadata=metadata, state=host_state)


def kept(ckpt_path: str) -> str:
    """What is left on disk after a failure: the last good checkpoint and its step, or that none was written yet."""
    if not os.path.exists(ckpt_path):
        return "no checkpoint was written yet"
    return f"the last good checkpoint (step {checkpoint.read_header(ckpt_path)['step']}) is kept at {ckpt_path}"


def interrupted(ckpt_path: str, step: int):
    """(message, checkpoint step or None) for a run interrupted at `step`: where it stands and how to resume."""
    saved = checkpoint.read_header(ckpt_path)["step"] if os.path.exists(ckpt_path) else None
    where = (f"checkpoint kept at {ckpt_path} (step {saved}); resume with --resume" if saved is not None
             else "no checkpoint was written yet; start the run again")
    return f"interrupted at step {step}; {where}", saved
