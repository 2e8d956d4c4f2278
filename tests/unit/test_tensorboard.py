"""TensorBoard events of a training run: the driver writes rank 0's log lines into <run dir>/tensorboard/<run
name>, wherever the workers ran; read back here with TensorBoard's own event format (tensorboardX's protobufs)."""

from __future__ import annotations

import struct
import threading
from pathlib import Path

from pbt_ray.config import load_config
from pbt_ray.training.launch import _show_progress, tensorboard_dir, tensorboard_writer


def read_scalars(logdir: Path) -> dict[str, list[tuple[int, float]]]:
    """{tag: [(step, value)]} from every event file under ``logdir`` (TFRecord: length, crc, event, crc)."""
    from tensorboardX.proto.event_pb2 import Event

    out: dict[str, list[tuple[int, float]]] = {}
    for path in sorted(Path(logdir).rglob("events.out.tfevents.*")):
        data = path.read_bytes()
        at = 0
        while at < len(data):
            (length,) = struct.unpack("<Q", data[at:at + 8])
            event = Event.FromString(data[at + 12:at + 12 + length])
            at += 12 + length + 4
            for value in event.summary.value:
                out.setdefault(value.tag, []).append((event.step, round(value.simple_value, 6)))
    return out


class ListQueue:
    def __init__(self, items):
        self.items = list(items)

    def get(self, timeout=None):
        if not self.items:
            raise TimeoutError
        return self.items.pop(0)

    def empty(self):
        return not self.items


def test_the_driver_writes_each_logged_metric_at_its_step(tmp_path):
    cfg = load_config("local", [f"runs_dir={tmp_path}"])
    items = [{"stage": "dpo", "step": 1, "max_steps": 2, "loss": 0.69, "rewards/margins": 0.0, "epoch": 0.5},
             {"stage": "dpo", "step": 2, "max_steps": 2, "loss": 0.61, "rewards/margins": 0.12, "eval_loss": 0.65}]
    done = threading.Thread(target=lambda: None)
    done.start()
    done.join()
    writer = tensorboard_writer(cfg, "dpo-abc", log=lambda *_: None)
    _show_progress(done, ListQueue(items), lambda *_: None, progress=False, writer=writer)
    writer.close()
    logdir = tensorboard_dir(cfg, "dpo-abc")
    assert logdir == tmp_path / "local" / "tensorboard" / "dpo-abc"
    scalars = read_scalars(logdir)
    assert scalars["dpo/loss"] == [(1, 0.69), (2, 0.61)]
    assert scalars["dpo/rewards/margins"] == [(1, 0.0), (2, 0.12)] and scalars["dpo/eval_loss"] == [(2, 0.65)]
    assert "dpo/step" not in scalars and "dpo/max_steps" not in scalars


def test_tracker_runs_are_named_by_run_stage_and_training_run():
    from trl import DPOConfig

    from pbt_ray.training.launch import tracker_run_name

    cfg = load_config("local", ["name=study"])
    assert tracker_run_name(cfg, "dpo", "dpo-balanced-seed2-0123456789") == "study/dpo/dpo-balanced-seed2-0123456789"
    args = DPOConfig(output_dir="/tmp/unused", run_name=tracker_run_name(cfg, "dpo", "r"), report_to="none", use_cpu=True)
    assert args.run_name == "study/dpo/r"  # what transformers' MLflow / W&B callbacks name the run
