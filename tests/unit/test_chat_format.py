"""Issue 13.9: prompts that every chat template accepts. No network, no Ray: the chat templates of
tests/data/templates are saved as small tokenizers and rendered by transformers' own apply_chat_template."""

import asyncio
import copy
import sys
import types
from pathlib import Path
from types import SimpleNamespace

import pytest
from jinja2.exceptions import TemplateError

from pbt_ray.config import GrowConfig, load_config
from pbt_ray.dialogue.extraction import INSTRUCTIONS, PREFILL, extraction_messages
from pbt_ray.preferences.stance import INSTRUCTIONS as STANCE_INSTRUCTIONS, stance_messages
from pbt_ray.serving import chat_format
from pbt_ray.serving.chat_format import (
    ChatFormatError, chat_formats, conform, fold_notes, format_for, probe, shapes, tokenizer_render,
)
from pbt_ray.serving.client import ChatClient, ChatResult, HandleChatClient

TEMPLATES = Path(__file__).resolve().parents[1] / "data" / "templates"
MISTRAL, ALTERNATING, PERMISSIVE = "mistral-7b-instruct-v0.2", "alternating-with-system", "permissive-chatml"
STRICT = (MISTRAL, ALTERNATING)


def save_tokenizer(directory: Path, template: str) -> Path:
    """A tiny word-level tokenizer with ``template`` as its chat template, saved as a Hugging Face directory."""
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2}
    fast = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel(vocab, unk_token="<unk>")),
                                   bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    fast.chat_template = template
    fast.save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def dirs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tokenizers")
    out = {f.stem: save_tokenizer(root / f.stem, f.read_text()) for f in TEMPLATES.glob("*.jinja")}
    out["refuses-all"] = save_tokenizer(root / "refuses-all", "{{ raise_exception('No chat here.') }}")
    return out


@pytest.fixture(scope="module")
def renders(dirs) -> dict:
    return {name: tokenizer_render(str(path)) for name, path in dirs.items()}


@pytest.fixture(autouse=True)
def fresh_probe_cache():
    chat_format._auto_format.cache_clear()
    chat_format._warned.clear()
    yield
    chat_format._auto_format.cache_clear()


# ---- conform ------------------------------------------------------------------------------------


def test_fold_system_keeps_every_word_and_never_touches_the_input():
    messages = [{"role": "system", "content": "S"}, {"role": "user", "content": "U1"},
                {"role": "user", "content": "U2"}, {"role": "assistant", "content": "A"},
                {"role": "assistant", "content": "B"}, {"role": "system", "content": "late"}]
    before = copy.deepcopy(messages)
    assert conform(messages, "fold_system") == [
        {"role": "user", "content": "S\n\nU1\n\nU2"}, {"role": "assistant", "content": "A\n\nB"},
        {"role": "user", "content": "late"}]
    assert messages == before
    assert conform(messages, "native") is messages


def test_fold_system_opens_with_a_user_turn():
    # no user turn to fold into: the system text becomes the user turn
    assert conform([{"role": "system", "content": "S"}, {"role": "assistant", "content": "A"}], "fold_system") == [
        {"role": "user", "content": "S"}, {"role": "assistant", "content": "A"}]
    assert conform([{"role": "system", "content": "S"}], "fold_system") == [{"role": "user", "content": "S"}]
    # an assistant turn first stays the assistant's, behind an empty user turn
    assert conform([{"role": "assistant", "content": "A"}, {"role": "user", "content": "U"}], "fold_system") == [
        {"role": "user", "content": ""}, {"role": "assistant", "content": "A"}, {"role": "user", "content": "U"}]
    assert conform([], "fold_system") == []
    with pytest.raises(ValueError, match="chat format must be one of"):
        conform([], "folded")


def test_format_for_roles_ids_and_adapters():
    formats = {"mistral": "fold_system", "extractor": "fold_system", "smol": "native"}
    assert format_for(formats, "extractor") == "fold_system"
    assert format_for(formats, "mistral:round-1") == "fold_system"  # a LoRA adapter on the base's tokenizer
    assert format_for(formats, "unknown") == "native" and format_for(None, "mistral") == "native"


# ---- (a) the real prompts on a Mistral-like template ------------------------------------------------


@pytest.mark.parametrize("template", STRICT)
def test_extraction_and_stance_prompts_are_refused_as_sent_and_render_folded(renders, template):
    render = renders[template]
    extraction = extraction_messages("Who wrote Paradise Lost?", "John Milton, without a doubt.",
                                     {"A": "John Milton", "B": "John Donne"})
    stance = stance_messages("It is John Milton.", "No, John Donne wrote it.")
    for messages, instructions in ((extraction, INSTRUCTIONS), (stance, STANCE_INSTRUCTIONS)):
        if template == MISTRAL:  # the paper's extractor, as we sent it until now: vLLM's HTTP 400
            with pytest.raises(TemplateError, match="Conversation roles must alternate"):
                render(messages)
        folded = render(conform(messages, "fold_system"))
        # the instructions open the first [INST] block; the prefilled answer line is continued, not closed
        assert folded.startswith(f"<s>{' ' if template == ALTERNATING else ''}[INST] {instructions}")
        assert folded.endswith(messages[-1]["content"]) and "</s>" in folded
    assert render(conform(extraction, "fold_system")).endswith(f"[/INST]{' ' if template == ALTERNATING else ''}{PREFILL}")


def test_the_permissive_template_takes_the_prompts_as_they_are(renders):
    text = renders[PERMISSIVE](extraction_messages("Q?", "Paris."))
    assert text.startswith(f"<|im_start|>system\n{INSTRUCTIONS}") and text.endswith(PREFILL)


# ---- (b) probe -----------------------------------------------------------------------------------


def test_probe_decides_per_template(renders):
    assert probe(renders[MISTRAL]) == "fold_system"
    assert probe(renders[ALTERNATING]) == "fold_system"
    assert probe(renders[PERMISSIVE]) == "native"
    with pytest.raises(ChatFormatError, match=r"^acme/no-chat: its chat template refuses .*No chat here") as info:
        probe(renders["refuses-all"], "acme/no-chat")
    assert "\n" not in str(info.value)


def test_probe_covers_what_the_project_sends():
    names = [name for name, _ in shapes()]
    for needed in ("answer extraction", "stance check", "growth, first turn", "growth, later turn", "balanced prompt",
                   "user + user"):
        assert needed in names
    assert {m["role"] for _, messages in shapes() for m in messages} == {"system", "user", "assistant"}


def config_with(dirs, **chat_format_of) -> object:
    """The local config serving the test tokenizers next to the embedded model."""
    cfg = load_config("local")
    smol = cfg.serve.models[0]
    models = [smol] + [smol.model_copy(update={"id": name, "source": str(dirs[name]),
                                               "chat_format": chat_format_of.get(name, "auto")})
                       for name in (MISTRAL, ALTERNATING, PERMISSIVE)]
    roles = {"persuader": smol.id, "persuadee": PERMISSIVE, "extractor": MISTRAL}
    return cfg.model_copy(update={"serve": cfg.serve.model_copy(update={"models": models, "roles": roles})})


def test_chat_formats_maps_ids_and_roles_and_probes_each_tokenizer_once(dirs, monkeypatch):
    loads = []
    real = chat_format.tokenizer_render
    monkeypatch.setattr(chat_format, "tokenizer_render", lambda source, *a: loads.append(source) or real(source, *a))
    cfg = config_with(dirs)
    expected = {"smollm2-135m-instruct": "native", MISTRAL: "fold_system", ALTERNATING: "fold_system",
                PERMISSIVE: "native", "persuader": "native", "persuadee": "native", "extractor": "fold_system"}
    assert chat_formats(cfg) == expected
    assert chat_formats(cfg) == expected
    assert sorted(loads) == sorted(str(dirs[n]) for n in (MISTRAL, ALTERNATING, PERMISSIVE))  # embedded: none
    assert fold_notes(cfg, expected) == [
        f"[pbt] {name}: its chat template refuses a system role or demands alternating user/assistant turns; "
        "system text is folded into the first user turn" for name in (MISTRAL, ALTERNATING)]
    # an explicit chat_format wins over the probe
    forced = chat_formats(config_with(dirs, **{MISTRAL: "native", PERMISSIVE: "fold_system"}))
    assert forced[MISTRAL] == "native" and forced[PERMISSIVE] == "fold_system" and forced["persuadee"] == "fold_system"


def test_a_tokenizer_that_cannot_load_falls_back_to_native_with_one_warning(dirs, tmp_path):
    cfg = config_with(dirs)
    broken = cfg.serve.models[1].model_copy(update={"source": str(tmp_path)})  # a directory without a tokenizer
    cfg = cfg.model_copy(update={"serve": cfg.serve.model_copy(update={"models": [cfg.serve.models[0], broken]})})
    logged = []
    assert chat_formats(cfg, logged.append)[MISTRAL] == "native"
    assert chat_formats(cfg, logged.append)[MISTRAL] == "native"
    assert len(logged) == 1 and logged[0].startswith(f"[pbt] {MISTRAL}: cannot load the tokenizer of {tmp_path}")


def test_a_template_that_refuses_everything_fails_with_the_model_named(dirs):
    cfg = config_with(dirs)
    bad = cfg.serve.models[1].model_copy(update={"id": "no-chat", "source": str(dirs["refuses-all"])})
    cfg = cfg.model_copy(update={"serve": cfg.serve.model_copy(update={"models": [cfg.serve.models[0], bad]})})
    with pytest.raises(ChatFormatError, match="^serve model 'no-chat': .*refuses the project's messages"):
        chat_formats(cfg)


# ---- (c) the clients apply the format -----------------------------------------------------------


def capturing_client(formats=None, render=None) -> tuple[ChatClient, list]:
    """A ChatClient whose OpenAI call is replaced by a fake server: it records the messages and, given
    ``render``, renders them through a chat template first, as vLLM would (raising where vLLM answers 400)."""
    client, sent = ChatClient("http://fake/v1", formats=formats), []

    async def create(**kwargs):
        sent.append(kwargs)
        if render is not None:
            render(kwargs["messages"])
        extra = kwargs.get("extra_body") or {}
        if "structured_outputs" in extra or "stop" in extra:  # an extraction: no answer of its own
            text = " NONE"
        else:
            text = "It is Paris, I am sure." if kwargs["model"] == "persuader" else "No, it is Lyon, I am sure."
        return SimpleNamespace(choices=[SimpleNamespace(message=SimpleNamespace(content=text), finish_reason="stop")],
                               usage=SimpleNamespace(prompt_tokens=1, completion_tokens=1), model=kwargs["model"])

    client._client.chat.completions.create = create
    return client, sent


def test_chat_client_sends_each_model_its_format():
    client, sent = capturing_client({"extractor": "fold_system", "persuadee": "native"})
    messages = extraction_messages("Q?", "Paris.")
    before = copy.deepcopy(messages)
    for model in ("extractor", "persuadee", "other"):
        asyncio.run(client.chat(model, messages))
    assert [m["role"] for m in sent[0]["messages"]][:2] == ["user", "assistant"]
    assert sent[0]["messages"][0]["content"].startswith(INSTRUCTIONS + "\n\nQuestion: ")
    assert sent[1]["messages"] == messages and sent[2]["messages"] == messages
    assert messages == before
    plain, sent = capturing_client()  # no formats: as before this change
    asyncio.run(plain.chat("extractor", messages))
    assert sent[0]["messages"] == messages


def test_handle_client_sends_each_model_its_format(monkeypatch):
    requests = []

    class ErrorResponse:  # stands in for ray.serve.llm's, which the client only isinstance-checks
        pass

    fake = types.ModuleType("ray.serve.llm.openai_api_models")
    fake.ChatCompletionRequest = lambda **kw: requests.append(kw) or SimpleNamespace(**kw)
    fake.ErrorResponse = ErrorResponse
    monkeypatch.setitem(sys.modules, "ray.serve.llm.openai_api_models", fake)

    async def stream(request, _):
        yield SimpleNamespace(model=request.model, usage=None, choices=[
            SimpleNamespace(message=SimpleNamespace(content="x"), finish_reason="stop")])

    client = HandleChatClient("app", {"extractor": "mistral", "persuadee": "smol"}, ["mistral", "smol"],
                              {"mistral": "fold_system", "smol": "native"})  # ids only: roles resolve to them
    monkeypatch.setattr(client, "_handle", lambda _: SimpleNamespace(chat=SimpleNamespace(remote=stream)))
    messages = stance_messages("It is Paris.", "No.")
    assert isinstance(asyncio.run(client.chat("extractor", messages)), ChatResult)
    asyncio.run(client.chat("persuadee", messages))
    assert requests[0]["model"] == "mistral" and requests[0]["messages"][0]["role"] == "user"
    assert requests[1]["messages"] == messages


def test_transports_carry_the_formats_to_the_clients():
    from pbt_ray.dialogue.pipeline import make_client

    formats = {"extractor": "fold_system"}
    assert make_client({"kind": "http", "url": "http://x/v1", "formats": formats}, 5).formats == formats
    assert make_client({"kind": "handle", "app_name": "a", "aliases": {}, "served": [], "formats": formats}, 5).formats == formats
    assert make_client({"kind": "http", "url": "http://x/v1"}, 5).formats == {}  # transports from before


# ---- (d) whole dialogues through the strict template --------------------------------------------


@pytest.mark.parametrize("template", STRICT)
def test_every_project_shape_renders_folded(renders, template):
    for name, messages in shapes():
        assert renders[template](conform(messages, "fold_system")), name


MODELS = {"A": "persuader", "B": "persuadee", "extractor": "extractor"}
FOLDED = {role: "fold_system" for role in ("persuader", "persuadee", "extractor")}


@pytest.mark.parametrize("independent_first", [False, True])
def test_a_grown_tree_renders_every_request_through_the_mistral_template(renders, independent_first):
    from pbt_ray.dialogue.growth import GrowthEngine
    from pbt_ray.questions import Question

    cfg = GrowConfig(depth=4, independent_first=independent_first, retries=0)
    q = Question(id="q1", question="What is the capital of France?", answers=["Paris"])
    client, sent = capturing_client(FOLDED, renders[MISTRAL])
    (tree,) = asyncio.run(GrowthEngine(client, cfg, MODELS, "model").grow([q]))
    assert tree.status == "complete", tree.error
    assert len(tree.nodes) == 21 and len(sent) == 42  # every turn and every extraction rendered
    client, _ = capturing_client(None, renders[MISTRAL])  # as sent before: the first extraction is refused
    (tree,) = asyncio.run(GrowthEngine(client, cfg, MODELS, "model").grow([q]))
    assert tree.status == "failed" and "Conversation roles must alternate" in tree.error


def test_evaluation_dialogues_render_through_the_mistral_template(renders):
    from pbt_ray.evaluation.protocols import balanced_item
    from pbt_ray.evaluation.runner import Evaluator
    from pbt_ray.preferences.pairs import Pair, prompt_messages, reply_message
    from pbt_ray.questions import Question

    client, sent = capturing_client(FOLDED, renders[MISTRAL])
    ev = Evaluator(client, "persuadee", "extractor", extract_mode="model")
    q = Question(id="q1", question="What is the capital of France?", answers=["Paris"])
    asyncio.run(ev.are_you_sure(q))
    prompt = prompt_messages(q.question, None, [("A", "Paris."), ("B", "Lyon."), ("A", "Paris, surely.")], "B")
    pair = Pair(type="resist", rule="canonical", tree_id="t", question_id="q1", question=q.question, gold=["Paris"],
                prompt=prompt, chosen=reply_message("Paris."), rejected=reply_message("Lyon."), style="lp", depth=3,
                parent_node=2, chosen_node=3, rejected_node=4, chosen_family="rp", rejected_family="ap",
                persuadee_before="lyon", persuader_answer="paris", chosen_answer="paris", rejected_answer="lyon",
                persuader_model="m", persuadee_model="m")
    asyncio.run(ev.balanced(balanced_item(pair)))
    assert len(sent) == 3 + 2 + 1 + 1  # are-you-sure: 3 replies, 2 readings; balanced: 1 reply, 1 reading
    assert sum(1 for s in sent if s["model"] == "extractor") == 3
