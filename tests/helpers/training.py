"""Reading what a training run logged (TensorBoard event files)."""

from __future__ import annotations

import glob
import os


def scalar_series(log_dir, tag: str) -> list[tuple[int, float]]:
    """(step, value) of TensorBoard scalar ``tag`` over all event files in ``log_dir``, sorted by step."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    values = []
    for path in glob.glob(os.path.join(str(log_dir), "events.out.tfevents.*")):
        accumulator = EventAccumulator(path, size_guidance={"scalars": 0, "images": 0})
        accumulator.Reload()
        if tag in accumulator.Tags()["scalars"]:
            values += [(event.step, event.value) for event in accumulator.Scalars(tag)]
    return sorted(values)


def image_tags(log_dir) -> set[str]:
    """TensorBoard image tags written in ``log_dir``."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tags = set()
    for path in glob.glob(os.path.join(str(log_dir), "events.out.tfevents.*")):
        accumulator = EventAccumulator(path, size_guidance={"images": 0})
        accumulator.Reload()
        tags.update(accumulator.Tags()["images"])
    return tags
