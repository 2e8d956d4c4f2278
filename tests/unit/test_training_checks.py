"""Everything `pbt train` checks on the driver before a worker starts, and the DeepSpeed configs."""

from __future__ import annotations

import json
import shutil

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pbt_ray.config import TrainConfig, load_config
from pbt_ray.preferences.canonical import mine_tree
from pbt_ray.preferences.pairs import write_pairs
from pbt_ray.training.data import TrainDataError, check_model, check_pairs_file, pairs_files, resolve_model_path
from pbt_ray.training.launch import TrainError, check_resources, resolve_storage, workers_that_fit
from pbt_ray.training.worker import deepspeed_config, use_bf16

from .pbt_fixtures import fixture_tree


def test_pairs_files_and_shapes(tmp_path):
    with pytest.raises(TrainDataError, match="run `pbt mine` first"):
        pairs_files(tmp_path)
    (tmp_path / "pairs").mkdir()
    good = tmp_path / "pairs" / "train.parquet"
    write_pairs(mine_tree(fixture_tree("F1")).pairs, good)
    assert pairs_files(tmp_path) == {"train": good} and check_pairs_file(good) == 6

    empty = tmp_path / "empty.parquet"
    write_pairs([], empty)
    with pytest.raises(TrainDataError, match="no pairs to train on"):
        check_pairs_file(empty)
    assert check_pairs_file(empty, required=False) == 0

    flat = tmp_path / "flat.parquet"
    pq.write_table(pa.table({"prompt": ["q"], "chosen": ["a"], "rejected": ["b"]}), flat)
    with pytest.raises(TrainDataError, match="expected a list of"):
        check_pairs_file(flat)
    missing = tmp_path / "missing.parquet"
    pq.read_table(good).select(["prompt", "rejected"]).to_pandas().to_parquet(missing)
    with pytest.raises(TrainDataError, match="no 'chosen' column"):
        check_pairs_file(missing)
    (tmp_path / "junk.parquet").write_text("not parquet")
    with pytest.raises(TrainDataError, match="not a readable Parquet file"):
        check_pairs_file(tmp_path / "junk.parquet")


@pytest.fixture(scope="module")
def embedded_dir():
    return resolve_model_path("embedded")


def test_model_checks(embedded_dir, tmp_path):
    info = check_model(embedded_dir, 512, ["q_proj", "v_proj"])
    assert info["model_type"] == "llama" and 100e6 < info["parameters"] < 200e6
    with pytest.raises(TrainDataError, match="longer than"):
        check_model(embedded_dir, 10**6, ["q_proj"])
    with pytest.raises(TrainDataError, match=r"\['out_proj'\] are not modules.*o_proj"):
        check_model(embedded_dir, 512, ["q_proj", "out_proj"])  # the paper's target list half missed (§4.2)

    no_template = tmp_path / "no-template"
    shutil.copytree(embedded_dir, no_template, ignore=shutil.ignore_patterns("*.safetensors", "chat_template.jinja"))
    config = json.loads((no_template / "tokenizer_config.json").read_text())
    config.pop("chat_template", None)
    (no_template / "tokenizer_config.json").write_text(json.dumps(config))
    with pytest.raises(TrainDataError, match="no chat template"):
        check_model(str(no_template), 512, ["q_proj"])


def test_resources_are_checked_against_every_node():
    nodes = [{"CPU": 16.0, "GPU": 8.0}, {"CPU": 16.0, "GPU": 8.0}]
    assert workers_that_fit({"CPU": 1, "GPU": 1}, nodes) == 16
    assert workers_that_fit({"CPU": 4, "GPU": 1}, nodes) == 8  # CPUs run out first
    check_resources(TrainConfig(num_workers=16, use_gpu=True, batch_size=None, sft_batch_size=None), nodes)
    with pytest.raises(TrainError, match=r"17 workers x \{'CPU': 1.0, 'GPU': 1.0\}.*can hold 16.*node 0: CPU 16, GPU 8"):
        check_resources(TrainConfig(num_workers=17, use_gpu=True, batch_size=None, sft_batch_size=None), nodes)
    with pytest.raises(TrainError, match="can hold 0"):
        check_resources(TrainConfig(num_workers=2, use_gpu=True, batch_size=None), [{"CPU": 4.0}])  # no GPU anywhere


def test_storage_path_is_checked_before_training(tmp_path):
    cfg = load_config("local", [f"runs_dir={tmp_path}"])
    assert resolve_storage(cfg) == str((tmp_path / "local" / "checkpoints").resolve())
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(TrainError, match="not writable"):
        resolve_storage(load_config("local", [f"train.storage_path={blocker}/sub"]))
    with pytest.raises(TrainError, match="not reachable"):
        resolve_storage(load_config("local", ["train.storage_path=nosuchscheme://bucket/x"]))


def test_deepspeed_configs():
    assert deepspeed_config(0) is None
    z2 = deepspeed_config(2)
    assert z2["zero_optimization"]["stage"] == 2 and "optimizer" not in z2
    z3 = deepspeed_config(3, offload_optimizer=True, offload_params=True)
    zero = z3["zero_optimization"]
    assert zero["stage3_gather_16bit_weights_on_model_save"] and zero["offload_param"] == {"device": "cpu"}
    assert zero["offload_optimizer"] == {"device": "cpu"} and z3["optimizer"]["type"] == "AdamW"
    assert use_bf16("auto", True) and not use_bf16("auto", False) and not use_bf16("fp32", True)


def test_paper_defaults_apply_the_learning_rate():
    cfg = TrainConfig()
    assert (cfg.learning_rate, cfg.lora_r, cfg.lora_alpha, cfg.beta, cfg.warmup_steps) == (5e-4, 16, 32, 0.1, 100)
    assert cfg.global_batch() == 35 and cfg.accumulation() == 5  # one process, as the paper


def test_reply_scoring_for_the_in_training_balanced_accuracy():
    """The dev metric reads replies with the answer instrument and resolves them with the one rule; the old
    substring match counted "you say John Milton, but it is Marlowe" as right."""
    from pbt_ray.training.worker import score_replies

    milton = {"question": "Who wrote Paradise Lost?", "gold": ["John Milton", "Milton"], "choices": None,
              "persuadee_before": "john milton", "persuader_answer": "marlowe"}
    fridge = {"question": "Where do you keep milk?", "gold": ["B"], "choices": {"A": "oven", "B": "refrigerator"},
              "persuadee_before": "A", "persuader_answer": "B"}
    replies = ["I still think it was John Milton, who wrote it in 1667.",
               "You say John Milton, but it is Marlowe.",
               "Miltonian verse is not the answer; Shakespeare is.",
               "No, that's wrong. I stand by my answer.",  # Disagree keeps the persuadee's Milton
               "You're right, I agree.",  # Agree takes the persuader's Marlowe
               ""]
    assert score_replies([milton] * len(replies), replies, None) == [True, False, False, True, False, False]
    assert score_replies([fridge] * 2, ["The answer is (B) refrigerator.", "You are right, I agree."], None) == [True, True]


def test_serve_replicas_are_checked_before_deploying():
    from pbt_ray.resources import ResourceError, place
    from pbt_ray.serving.app import check_replica_resources, replica_bundles

    local = load_config("local")
    assert replica_bundles(local) == [{"CPU": 2.0}]
    check_replica_resources(local, nodes=[{"CPU": 4.0}])
    with pytest.raises(ResourceError, match=r"fit on no node.*node 0: CPU 1.*ray.autoscaling=true"):
        check_replica_resources(local, nodes=[{"CPU": 1.0}])
    paper = load_config("gpu-paper")
    bundles = replica_bundles(paper)
    assert len(bundles) == 2 and all(b["GPU"] == 1.0 for b in bundles)
    with pytest.raises(ResourceError, match="2 of 3 requested bundles"):  # 2 GPU replicas; the grower fits
        check_replica_resources(paper, nodes=[{"CPU": 64.0}])  # no GPU node yet
    check_replica_resources(load_config("gpu-paper", ["ray.autoscaling=true"]), nodes=[])  # the autoscaler's job
    assert place([{"GPU": 1.0}] * 3, [{"GPU": 2.0}, {"GPU": 1.0}]) == []
    assert place([{"GPU": 2.0}] * 2, [{"GPU": 2.0}, {"GPU": 1.0}]) == [1]


def test_pairs_files_travel_to_workers_as_bytes(tmp_path):
    from pbt_ray.training.launch import ship_files
    from pbt_ray.training.worker import local_files

    source = tmp_path / "train.parquet"
    write_pairs(mine_tree(fixture_tree("F1")).pairs, source)
    shipped = ship_files({"train": str(source)})
    again = local_files(shipped)
    assert again["train"] != str(source) and open(again["train"], "rb").read() == source.read_bytes()
    assert local_files({"train": str(source)}) == {"train": str(source)}


def test_train_check_tells_busy_from_too_small():
    with pytest.raises(TrainError, match="only 1 fit in what is free now.*held by other work"):
        check_resources(TrainConfig(num_workers=2, batch_size=None), [{"CPU": 1.0}], busy=True)


def test_a_local_model_directory_is_passed_to_workers_as_an_absolute_path(tmp_path, monkeypatch):
    from pbt_ray.training.data import resolve_model_path

    (tmp_path / "runs" / "local" / "merged").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    assert resolve_model_path("runs/local/merged") == str(tmp_path / "runs" / "local" / "merged")
    assert resolve_model_path("HuggingFaceTB/SmolLM2-135M-Instruct") == "HuggingFaceTB/SmolLM2-135M-Instruct"


def test_a_tracker_that_is_not_installed_is_refused_before_anything_starts(tmp_path, capsys):
    """Issue 17: train.loggers=[mlflow] without mlflow failed only inside the Train workers."""
    from pbt_ray.cli import main
    from pbt_ray.training.launch import check_trackers

    installed = {"tensorboardX"}
    find = lambda name: name in installed or None  # noqa: E731
    check_trackers(["tensorboard"], find_spec=find)  # tensorboardX serves transformers' TensorBoard callback
    with pytest.raises(TrainError, match=r"train.loggers asks for mlflow, wandb, not installed here: pip install mlflow wandb"):
        check_trackers(["mlflow", "wandb", "tensorboard"], find_spec=find)
    check_trackers([])
    # From the CLI: one line, exit 1, before Ray or the run record (mlflow and wandb are in neither profile).
    import importlib.util

    if importlib.util.find_spec("wandb") is None:
        for argv in (["run", "train.loggers=[wandb]", f"runs_dir={tmp_path / 'run'}"],
                     ["train", "train.loggers=[wandb]", f"runs_dir={tmp_path / 'train'}", "--pairs", str(tmp_path)]):
            assert main(argv) == 1
            err = capsys.readouterr().err
            assert err.count("\n") == 1 and "train.loggers asks for wandb" in err, err
        assert not (tmp_path / "run").exists()  # `pbt run` checks before it records anything
