"""Chat messages that every chat template accepts (issue 13, item 9; docs/extraction.md).

Answer extraction and the stance check open with a system message, and nothing else here assumed a chat
template cares about role order. Some do: Mistral-7B-Instruct-v0.2's template (the paper's extractor)
raises "Conversation roles must alternate user/assistant/user/assistant/..." on a system message or on
two turns of one role in a row, which vLLM answers with HTTP 400 (vllm-project/vllm#6862). So each served
model gets a format, applied by the chat clients to every request:

- ``native``: the messages as the project builds them;
- ``fold_system``: the system text opens the first user turn and same-role neighbours are merged, which
  such templates accept and which keeps every word of the prompt.

``serve.models[].chat_format: auto`` decides it by rendering the model's own template (its tokenizer only,
never its weights) with the shapes the project sends. Pure: no Ray; transformers is imported only where
a tokenizer is loaded.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

FORMATS = ("native", "fold_system")
# SmolLM2's ChatML template takes any role in any order (tests/integration/test_chat_format_embedded.py
# probes the real tokenizer): the embedded model needs no probe, so local runs and unit tests never load a
# tokenizer, nor convert the embedded model just to look at its template.
EMBEDDED_FORMAT = "native"

Render = Callable[[list[dict]], str]


class ChatFormatError(RuntimeError):
    """A model's chat template refuses the project's messages in every format."""


def conform(messages: list[dict], fmt: str) -> list[dict]:
    """The messages in format ``fmt``; the input is never modified (``native`` returns it as it is)."""
    if fmt == "native":
        return messages
    if fmt != "fold_system":
        raise ValueError(f"chat format must be one of {FORMATS}, got {fmt!r}")
    lead = 0
    while lead < len(messages) and messages[lead]["role"] == "system":
        lead += 1
    out: list[dict] = []
    for message in messages[lead:]:
        # A later system message has no place in such templates either; it is instructions, i.e. user text.
        role = "user" if message["role"] == "system" else message["role"]
        if out and out[-1]["role"] == role:
            out[-1] = {**out[-1], "content": f"{out[-1]['content']}\n\n{message['content']}"}
        else:
            out.append({**message, "role": role})
    system = "\n\n".join(m["content"] for m in messages[:lead])
    if system and out and out[0]["role"] == "user":
        out[0] = {**out[0], "content": f"{system}\n\n{out[0]['content']}"}
    elif system:  # no user turn to open: the system text becomes one
        out.insert(0, {"role": "user", "content": system})
    elif out and out[0]["role"] != "user":
        # The templates want a user turn first. An empty one adds no words and keeps the assistant's text the
        # assistant's: folding it into a user turn would show the model its own reply as the partner's words.
        out.insert(0, {"role": "user", "content": ""})
    return out


def format_for(formats: dict[str, str] | None, model: str) -> str:
    """The format of a request's model: its id or role, else the base id of a multiplexed LoRA adapter
    (``<base id>:<adapter>``, same tokenizer), else ``native``."""
    if not formats:
        return "native"
    return formats.get(model) or formats.get(model.split(":", 1)[0], "native")


def shapes() -> list[tuple[str, list[dict]]]:
    """The message shapes the project sends to a served model, built by the project's own builders."""
    from pbt_ray.config import GrowConfig
    from pbt_ray.dialogue.extraction import extraction_messages
    from pbt_ray.dialogue.rules import messages_for
    from pbt_ray.dialogue.tree import Node
    from pbt_ray.evaluation.protocols import BELIEF_CHECK, CHALLENGE, first_turn
    from pbt_ray.preferences.pairs import prompt_messages, reply_message
    from pbt_ray.preferences.stance import stance_messages

    q, grow = "What is the capital of France?", GrowConfig()
    turns = [Node(id=0, parent=-1, depth=0, speaker="A", role="independent", family="lp", text="It is Paris."),
             Node(id=1, parent=0, depth=1, speaker="B", role="persuadee", family="rp", text="No, it is Lyon.")]
    opening = first_turn(q)
    pair = prompt_messages(q, None, [("A", "Paris."), ("B", "Lyon."), ("A", "Paris, surely.")], persuadee="B")
    return [
        ("system + user", [{"role": "system", "content": "Be brief."}, {"role": "user", "content": q}]),
        ("system + user/assistant/user", [{"role": "system", "content": "Be brief."}, *opening,
                                          {"role": "assistant", "content": "Paris."},
                                          {"role": "user", "content": CHALLENGE}]),
        # system, few-shot turns, a prefilled answer turn (continued, not closed)
        ("answer extraction", extraction_messages(q, "Paris, I am sure.")),
        ("stance check", stance_messages("It is Paris.", "No, Lyon.")),
        ("growth, first turn", messages_for("lp", q, [], "A", grow)),
        ("growth, later turn", messages_for("lp", q, turns, "A", grow)),
        ("evaluation, belief check", [*opening, {"role": "assistant", "content": "Paris."},
                                      {"role": "user", "content": BELIEF_CHECK}]),
        ("balanced prompt", pair),
        ("training pair", [*pair, *reply_message("Paris.")]),
        # Not sent today (growth and pairs merge same-role turns), but the next prompt change could: a
        # template that refuses it is then served folded rather than failing mid-run.
        ("user + user", [{"role": "user", "content": q}, {"role": "user", "content": "It is Paris."}]),
    ]


def _refusal(render: Render, cases: list[tuple[str, list[dict]]], fmt: str) -> str | None:
    for name, messages in cases:
        try:
            render(conform(messages, fmt))
        except Exception as exc:  # noqa: BLE001 - any refusal of the template counts
            return f"{name}: {' '.join(str(exc).split())[:200]}"
    return None


def probe(render: Render, name: str = "the model", cases: list[tuple[str, list[dict]]] | None = None) -> str:
    """``native`` if ``render`` takes every shape as built, ``fold_system`` if it takes them folded; else
    :class:`ChatFormatError`. ``render(messages)`` raises on a refused shape."""
    cases = shapes() if cases is None else cases
    if _refusal(render, cases, "native") is None:
        return "native"
    refused = _refusal(render, cases, "fold_system")
    if refused is None:
        return "fold_system"
    raise ChatFormatError(f"{name}: its chat template refuses the project's messages even with the system text "
                          f"folded into the first user turn ({refused})")


def tokenizer_render(source: str, dtype: str = "float32", trust_remote_code: bool = False) -> Render:
    """Render through a Hugging Face tokenizer's chat template, as vLLM does: a final assistant turn is a
    prefill to continue (extraction, stance), anything else gets the generation prompt."""
    from transformers import AutoTokenizer

    from pbt_ray.models import EMBEDDED, resolve_model_source

    path = resolve_model_source(source, dtype) if source == EMBEDDED else source
    tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)

    def render(messages: list[dict]) -> str:
        prefill = bool(messages) and messages[-1]["role"] == "assistant"
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=not prefill,
                                             continue_final_message=prefill)

    return render


@functools.lru_cache(maxsize=None)
def _auto_format(source: str, dtype: str, trust_remote_code: bool) -> tuple[str, str | None]:
    """(format, warning) of a tokenizer source, probed once per process. Loading fails (no hub access, a
    bad path): ``native``, the old behaviour, with a warning. A template that refuses every format raises."""
    try:
        render = tokenizer_render(source, dtype, trust_remote_code)
    except Exception as exc:  # noqa: BLE001 - OSError offline, ModelError, a missing tokenizer class, ...
        return "native", (f"cannot load the tokenizer of {source} to check its chat template "
                          f"({' '.join(str(exc).split())[:200]}); sending messages as built (chat_format native). "
                          "Set serve.models[].chat_format: fold_system if its template refuses a system role.")
    return probe(render, source), None


_warned: set[str] = set()


def chat_formats(cfg, log: Callable[[str], None] = print) -> dict[str, str]:
    """Served model id and role name (``cfg.serve.roles``) -> format, for a :class:`pbt_ray.config.PBTConfig`.
    An explicit ``chat_format`` wins; ``auto`` probes the model's tokenizer (cached per source)."""
    from pbt_ray.models import EMBEDDED

    formats: dict[str, str] = {}
    for model in cfg.serve.models:
        source = model.tokenizer or model.source
        if model.chat_format != "auto":
            formats[model.id] = model.chat_format
        elif source == EMBEDDED:
            formats[model.id] = EMBEDDED_FORMAT
        else:
            try:
                formats[model.id], warning = _auto_format(source, model.dtype, model.trust_remote_code)
            except ChatFormatError as exc:
                raise ChatFormatError(f"serve model '{model.id}': {exc}; give it a chat template that takes "
                                      "user/assistant turns") from None
            if warning and source not in _warned:
                _warned.add(source)
                log(f"[pbt] {model.id}: {warning}")
    formats.update({role: formats[target] for role, target in cfg.serve.roles.items() if target in formats})
    return formats


def fold_notes(cfg, formats: dict[str, str]) -> list[str]:
    """One deploy-log line per served model whose messages are folded."""
    why = {"auto": "its chat template refuses a system role or demands alternating user/assistant turns",
           "fold_system": "serve.models[].chat_format is fold_system"}
    return [f"[pbt] {m.id}: {why[m.chat_format]}; system text is folded into the first user turn"
            for m in cfg.serve.models if formats.get(m.id) == "fold_system"]
