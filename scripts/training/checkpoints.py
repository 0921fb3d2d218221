"""Training checkpoints: atomic writes, resume-from-latest, and exported inference weights.

A run is resumable when re-running the same command continues where it stopped. ``ResumableCheckpoint``
does both halves for a trainer: every ``save_interval`` epochs it writes ``checkpoint_epoch=<n>.pt``
holding the trainer state (epoch, iteration) and every object passed in (networks, optimisers, EMA,
learning-rate schedulers, AMP grad scalers); when attached to a fresh trainer it loads the newest such
file before the first iteration. Files are written to a temporary name and renamed, so a run killed
while saving never leaves a truncated checkpoint behind.
"""

from __future__ import annotations

import glob
import logging
import os
import re
from collections.abc import Mapping, Sequence

import torch
from ignite.engine import Engine, Events
from ignite.handlers import Checkpoint, DiskSaver
from monai.handlers import CheckpointLoader, CheckpointSaver

CHECKPOINT_PREFIX = "checkpoint"
_EPOCH_PATTERN = re.compile(re.escape(CHECKPOINT_PREFIX) + r"_epoch=(\d+)\.pt$")

logger = logging.getLogger(__name__)


class AtomicDiskSaver(DiskSaver):
    """Ignite ``DiskSaver`` that writes to a temporary file and renames it (on rank 0 only).

    Args:
        dirname: folder of the files (created when missing).
        filename: fixed file name replacing the one ignite generates (None: keep ignite's name).
    """

    def __init__(self, dirname: str, filename: str | None = None) -> None:
        super().__init__(dirname=dirname, atomic=True, create_dir=True, require_empty=False)
        self.filename = filename

    def __call__(self, checkpoint: Mapping, filename: str, metadata: Mapping | None = None) -> None:
        super().__call__(checkpoint, self.filename or filename, metadata)

    def remove(self, filename: str) -> None:
        super().remove(self.filename or filename)


class AtomicCheckpointSaver(CheckpointSaver):
    """MONAI ``CheckpointSaver`` whose files are written atomically (same arguments).

    MONAI's saver writes in place; a run killed mid-write would leave a truncated ``model.pt``. With a
    single object in ``save_dict`` the file is that object's plain ``state_dict`` (what
    ``scripts.networks.weights.load_weights`` reads with ``key=None``).
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        for checkpoint in (self._final_checkpoint, self._key_metric_checkpoint, self._interval_checkpoint):
            if checkpoint is not None:
                checkpoint.save_handler = AtomicDiskSaver(
                    self.save_dir, getattr(checkpoint.save_handler, "filename", None)
                )


class EngineAttributeState:
    """``state_dict``/``load_state_dict`` of an engine attribute that exists only once the engine runs.

    ``SupervisedTrainer`` creates its AMP ``GradScaler`` in ``run()``, after the config is parsed, so the
    scaler cannot be named in a config; this wrapper reads ``getattr(engine, name)`` when saving or
    loading. A missing or disabled scaler saves ``{}``; loading ``{}`` is a no-op (a checkpoint written
    without AMP resumes with AMP from a fresh scaler).
    """

    def __init__(self, engine: Engine, name: str) -> None:
        self.engine = engine
        self.name = name

    def state_dict(self) -> dict:
        value = getattr(self.engine, self.name, None)
        return {} if value is None else value.state_dict()

    def load_state_dict(self, state: dict) -> None:
        value = getattr(self.engine, self.name, None)
        if state and value is not None and getattr(value, "is_enabled", lambda: True)():
            value.load_state_dict(state)


class BestModelState:
    """``state_dict``/``load_state_dict`` of the best model so far: the best-model ``CheckpointSaver``'s score
    and the validator's own best metric and its epoch.

    Without the saver's score a resumed run forgets it, and its first validation overwrites the best-model
    file even when it is worse. Without the validator's, the resumed validator announces a worse value as a
    "new best metric" and reports it as the best value, contradicting the file on disk.

    Args:
        saver: the best-model saver (None on ranks that do not save).
        validator: the validation engine (a MONAI ``Workflow``: ``state.best_metric`` /
            ``state.best_metric_epoch``), or None.
    """

    def __init__(self, saver: CheckpointSaver | None, validator: Engine | None = None) -> None:
        self.saver = saver
        self.validator = validator

    def state_dict(self) -> dict:
        checkpoint = None if self.saver is None else self.saver._key_metric_checkpoint
        state = {} if checkpoint is None else dict(checkpoint.state_dict())
        if self.validator is not None:
            validator_state = self.validator.state
            state["validator_best_metric"] = {
                "best_metric": getattr(validator_state, "best_metric", -1),
                "best_metric_epoch": getattr(validator_state, "best_metric_epoch", -1),
            }
        return state

    def load_state_dict(self, state: dict) -> None:
        state = dict(state)
        best = state.pop("validator_best_metric", None)  # absent from checkpoints of bundle versions < 1.7
        if best is not None and self.validator is not None:
            self.validator.state.best_metric = best["best_metric"]
            self.validator.state.best_metric_epoch = best["best_metric_epoch"]
        if state and self.saver is not None and self.saver._key_metric_checkpoint is not None:
            self.saver.load_state_dict(state)


def saved_checkpoints(ckpt_dir: str) -> list[tuple[int, str]]:
    """``(epoch, path)`` of every ``checkpoint_epoch=<n>.pt`` in ``ckpt_dir``, oldest first."""
    found = []
    for path in glob.glob(os.path.join(glob.escape(os.fspath(ckpt_dir)), f"{CHECKPOINT_PREFIX}_epoch=*.pt")):
        match = _EPOCH_PATTERN.search(os.path.basename(path))
        if match:
            found.append((int(match.group(1)), path))
    return sorted(found)


def latest_checkpoint(ckpt_dir: str) -> str | None:
    """Path of ``checkpoint_epoch=<n>.pt`` with the largest ``n`` in ``ckpt_dir`` (None when there is none)."""
    found = saved_checkpoints(ckpt_dir)
    return found[-1][1] if found else None


class ResumableCheckpoint:
    """Save the whole training state every ``save_interval`` epochs and resume from the newest save.

    Args:
        ckpt_dir: folder of ``checkpoint_epoch=<n>.pt``.
        objects: name -> object with ``state_dict``/``load_state_dict`` (networks, optimisers, EMA model,
            LR scheduler, ...). The trainer itself is added as ``"trainer"`` (epoch and iteration counters).
            A ``CheckpointSaver`` saves its best score with the ``validator``'s best metric
            (``BestModelState``); None entries (handlers disabled on this rank) are left out.
        engine_attributes: engine attributes created only when the run starts (``"scaler"`` of
            ``SupervisedTrainer``); see ``EngineAttributeState``.
        save_interval: epochs between saves (the last epoch is always saved).
        n_saved: how many of the newest checkpoints to keep (None: all).
        resume: load the newest checkpoint of ``ckpt_dir`` when the run starts.
        save: write checkpoints (False on the ranks > 0 of a distributed run, which only load).
        map_location: ``torch.load`` map location (each rank's device in distributed runs).
        validator: the validation engine whose best metric is saved and restored with the best-model saver's
            score, so that after a resume its log agrees with the best-model file.
    """

    def __init__(
        self,
        ckpt_dir: str,
        objects: Mapping,
        engine_attributes: Sequence[str] = ("scaler",),
        save_interval: int = 1,
        n_saved: int | None = 2,
        resume: bool = True,
        save: bool = True,
        map_location: str | torch.device | None = "cpu",
        validator: Engine | None = None,
    ) -> None:
        if int(save_interval) < 1:
            raise ValueError(f"checkpoint save_interval must be >= 1 epoch, got {save_interval}.")
        self.ckpt_dir = os.fspath(ckpt_dir)
        self.objects = dict(objects)
        self.engine_attributes = tuple(engine_attributes)
        self.save_interval = int(save_interval)
        self.n_saved = n_saved
        self.resume = bool(resume)
        self.save = bool(save)
        self.map_location = map_location
        self.validator = validator
        self.resumed_from: str | None = None
        self._trained_epoch: int | None = None

    def attach(self, engine: Engine) -> None:
        objects = {"trainer": engine}
        for name, value in self.objects.items():
            if isinstance(value, CheckpointSaver):
                objects[name] = BestModelState(value, self.validator)
            elif value is not None:
                objects[name] = value
        for name in self.engine_attributes:
            objects[name] = EngineAttributeState(engine, name)
        if self.resume:
            path = latest_checkpoint(self.ckpt_dir)
            if path is None:
                logger.info(f"No checkpoint in '{self.ckpt_dir}': training starts from epoch 1.")
            else:
                self.resumed_from = path
                logger.info(f"Resuming training from '{path}'.")
                CheckpointLoader(load_path=path, load_dict=objects, map_location=self.map_location).attach(engine)
        if self.save:
            checkpoint = Checkpoint(
                to_save=objects,
                save_handler=AtomicDiskSaver(self.ckpt_dir),
                score_function=lambda e: e.state.epoch,
                score_name="epoch",
                n_saved=self.n_saved,
            )
            engine.add_event_handler(Events.STARTED, self._started, checkpoint)

    def _started(self, engine: Engine, checkpoint: Checkpoint) -> None:
        # Files written before a resume count towards n_saved: beyond it the oldest go now, and the rest
        # are removed in turn as new ones come.
        found = saved_checkpoints(self.ckpt_dir)
        if self.n_saved is not None and len(found) > self.n_saved:
            for _, path in found[: len(found) - self.n_saved]:
                os.remove(path)
            found = found[len(found) - self.n_saved :]
        checkpoint.load_state_dict({"_saved": [(epoch, os.path.basename(path)) for epoch, path in found]})
        if not engine.has_event_handler(self._epoch_completed, Events.EPOCH_COMPLETED):
            # Registered now, after every handler attached with the config (validation, best-model saver),
            # so an epoch's checkpoint holds that epoch's validation result.
            engine.add_event_handler(Events.EPOCH_COMPLETED, self._epoch_completed, checkpoint)
            engine.add_event_handler(Events.COMPLETED, self._completed, checkpoint)

    def _epoch_completed(self, engine: Engine, checkpoint: Checkpoint) -> None:
        self._trained_epoch = engine.state.epoch
        if engine.state.epoch % self.save_interval == 0:
            checkpoint(engine)

    def _completed(self, engine: Engine, checkpoint: Checkpoint) -> None:
        # the last epoch is saved even off the interval; a resumed run that had already finished trains
        # no epoch and writes nothing
        if self._trained_epoch == engine.state.epoch and engine.state.epoch % self.save_interval:
            checkpoint(engine)


def initial_weights(
    network: torch.nn.Module, path: str | None, load_old: bool = False, key: str | None = None
) -> torch.nn.Module:
    """``network`` with the weights of ``path`` (fine-tuning), or as initialised when ``path`` is None/""."""
    if path:
        from scripts.networks.weights import load_weights

        network = load_weights(network, path, load_old=load_old, key=key)
    return network.train()
