"""`karp-robust train`: train a registered model with a defense into the checkpoint store.

    karp-robust train --model certcnn --dataset mnist --defense ibp --data-dir ../shared/data

The cost comes first: the loop's real steps are timed on a few batches (training/estimate.py) and
the estimate printed before the training starts; it is calibrated again on the first batches and
corrected after every epoch, and off a terminal a progress line comes every 10 s.
"""

from __future__ import annotations

import datetime
import json
import os
import shutil
import sys
from dataclasses import asdict

from tqdm import tqdm

from robustbench_karp.cli.progress import TqdmTraining
from robustbench_karp.store import atomic_write_bytes


def train_config_from_args(args):
    """The TrainConfig a `karp-robust train` command line asks for: the registered recipe plus its flags."""
    from robustbench_karp.data import DATASETS
    from robustbench_karp.models import MODELS
    from robustbench_karp.training.config import make_train_config

    DATASETS.get(args.dataset), MODELS.get(args.model)
    overrides = {k: getattr(args, k) for k in ("epochs", "batch_size", "lr", "optimizer", "schedule", "momentum",
                                               "weight_decay", "eps_ramp_epochs", "ema_decay", "select", "amp",
                                               "channels_last", "fused")
                 if getattr(args, k) is not None}
    if args.eps is not None and len(args.eps) != 1:
        raise ValueError("train takes a single --eps")
    return make_train_config(args.model, args.dataset, args.defense, defense_options=dict(args.defense_arg),
                             recipe_overrides=overrides, norm=args.norm, eps=args.eps[0] if args.eps else None,
                             seed=args.seed, train_size=args.train_size)


def cmd_train(args) -> int:
    from robustbench_karp.devices import resolve_device
    from robustbench_karp.training.checkpoints import checkpoint_path
    from robustbench_karp.training.logs import TensorBoardCallback
    from robustbench_karp.training.loop import ResumeError, fit, interrupted_epoch

    config = train_config_from_args(args)
    device = resolve_device(args.device)
    out = checkpoint_path(config, device)
    main_rank = int(os.environ.get("RANK", "0")) == 0
    if out.is_file() and not (args.force or args.resume):
        if main_rank:
            print(f"already trained: {out} (use --force to retrain)")
        _copy(out, args.out)
        return 0
    if args.resume and args.restart:
        raise ValueError("--resume and --restart contradict each other: pick one")
    saved = interrupted_epoch(out)
    if args.resume and saved is None:
        raise ResumeError(f"--resume: no interrupted run to resume ({out.with_suffix('.last.pt')} does not exist)")
    if saved is not None and args.restart:
        if main_rank:
            out.with_suffix(".last.pt").unlink(missing_ok=True)
            print(f"--restart: discarded the interrupted run of {out.stem} ({saved} epochs saved)", file=sys.stderr)
        saved = None
    elif saved is not None and main_rank:
        print(f"resuming the interrupted run of {out.stem} after epoch {saved} (--restart starts over)",
              file=sys.stderr)
    if main_rank:
        print(f"training {out.stem}: {json.dumps(asdict(config)['recipe'])}", file=sys.stderr)
    callbacks = [TqdmTraining(), _clock(config, device, args, saved or 0)] if main_rank else []
    if args.tensorboard and main_rank:  # one subdirectory per run, so runs' curves never overlap
        stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%d-%H%M%S")
        callbacks.append(TensorBoardCallback(args.tensorboard / f"{out.stem}-{stamp}"))
    payload = fit(config, out, data_dir=args.data_dir, device=device, download=args.download,
                  resume=saved is not None, callbacks=callbacks)
    if main_rank:
        if payload["stopped_early"]:
            print(f"catastrophic overfitting: stopped after epoch {payload['epochs_completed']}, kept the weights of "
                  f"epoch {payload['selected_epoch']}")
        kept = payload["history"][payload["selected_epoch"] - 1] if payload["history"] else {}
        print(f"checkpoint {out}  (epoch {payload['selected_epoch']}: val clean "
              f"{kept.get('val_clean_accuracy', float('nan')):.4f}, val PGD-10 {kept.get('val_pgd_accuracy', float('nan')):.4f})")
        _copy(out, args.out)
    return 0


def _clock(config, device, args, first_epoch: int):
    """The estimate, printed before the training starts, and the clock that corrects it as the training runs."""
    from robustbench_karp.training.estimate import TrainingClock, describe_seconds, measure_training

    clock = TrainingClock(say=lambda line: tqdm.write(line, file=sys.stderr), tty=sys.stderr.isatty())
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        return clock  # under torchrun each rank's share of a step differs from one process's: no estimate
    estimate = measure_training(config, device, args.data_dir, args.download)
    left = estimate.seconds(first_epoch)
    print(f"estimate: about {describe_seconds(left)} on {device} for {config.recipe['epochs'] - first_epoch} epochs "
          f"({estimate.step_seconds(first_epoch):.3g} s a batch x {estimate.steps_per_epoch} batches an epoch, "
          f"{estimate.validation:.1f} s of validation an epoch; measured on {estimate.batches} batches, corrected "
          "after the first batches and every epoch)", file=sys.stderr, flush=True)
    clock.expect(estimate, first_epoch)
    return clock


def _copy(src, dst) -> None:
    if dst is None:
        return
    with open(src, "rb") as f:
        atomic_write_bytes(dst, lambda out: shutil.copyfileobj(f, out))
    print(f"copied to {dst}")
