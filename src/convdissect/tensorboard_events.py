"""Reading a run's TensorBoard event files back: what the Scalars and HParams tabs show."""

from __future__ import annotations

from pathlib import Path

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import metadata as hp_metadata


def accumulators(log_dir: Path, **size_guidance: int) -> list[EventAccumulator]:
    """One loaded accumulator per event file below log_dir, in path order."""
    out = []
    for events in sorted(Path(log_dir).rglob("events.out.tfevents*")):
        acc = EventAccumulator(str(events), size_guidance=size_guidance or None)
        acc.Reload()
        out.append(acc)
    return out


def hparams_of(log_dir: Path) -> tuple[dict, list[str]]:
    """The HParams tab's view of a run: its hyperparameters and the names of its metrics."""
    values, metric_tags = {}, []
    for acc in accumulators(log_dir):
        try:
            content = acc.PluginTagToContent(hp_metadata.PLUGIN_NAME)
        except KeyError:  # an event file without hparams
            continue
        if hp_metadata.SESSION_START_INFO_TAG in content:
            info = hp_metadata.parse_session_start_info_plugin_data(content[hp_metadata.SESSION_START_INFO_TAG])
            # the value's own kind: `or` across the kinds read a 0 as False and an empty string as 0.0
            values.update(
                {k: getattr(v, v.WhichOneof("kind")) for k, v in info.hparams.items() if v.WhichOneof("kind")}
            )
        if hp_metadata.EXPERIMENT_TAG in content:
            experiment = hp_metadata.parse_experiment_plugin_data(content[hp_metadata.EXPERIMENT_TAG])
            metric_tags += [m.name.tag for m in experiment.metric_infos]
    return values, metric_tags


def last_scalars(log_dir: Path) -> dict[str, float]:
    """Each scalar tag's last value (the HParams tab shows a metric's last value)."""
    return {tag: acc.Scalars(tag)[-1].value for acc in accumulators(log_dir) for tag in acc.Tags()["scalars"]}
