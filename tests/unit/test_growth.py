"""The growth engine on a scripted backend: exact shapes, roles, families, pruning, modes, failures."""

import asyncio
import functools
import random
import re

import pyarrow as pa
import pytest

from pbt_ray.config import GrowConfig
from pbt_ray.dialogue import growth
from pbt_ray.dialogue.growth import GrowthEngine
from pbt_ray.dialogue.prompts import FAMILIES
from pbt_ray.dialogue.rules import full_tree_size
from pbt_ray.dialogue.tree import from_row, to_row, tree_schema
from pbt_ray.questions import Question
from pbt_ray.serving.client import ChatResult, EndpointError

MODELS = {"A": "model-a", "B": "model-b", "extractor": "extractor"}
Q = Question(id="q1", question="Who wrote Paradise Lost?", answers=["John Milton", "Milton"])


def family_of(messages):
    last = messages[-1]["content"]  # the family's instruction ends the last user message
    return next((f for f, text in FAMILIES.items() if text and last.endswith(text)), "sp")


class Scripted:
    """A fake engine: ``say(speaker, family, depth, messages)`` returns a turn's text; the extractor
    reads "the answer is X." back as X, "I agree" as Agree, "you are wrong" as Disagree."""

    def __init__(self, say, fail=None, delay=None):
        self.say, self.fail, self.delay = say, fail or (lambda *_: None), delay
        self.calls, self.in_flight, self.peak = [], 0, 0

    async def chat(self, model, messages, *, temperature, max_tokens, seed=None, extra=None):
        self.in_flight += 1
        self.peak = max(self.peak, self.in_flight)
        try:
            await asyncio.sleep(self.delay() if self.delay else 0)
            self.calls.append((model, messages, temperature, seed, extra or {}))
            error = self.fail(model, messages)
            if error:
                raise error
            if model == "extractor":  # continues the prefilled "Final Answer:" of the last message
                assert messages[-1] == {"role": "assistant", "content": "Final Answer:"} and extra["continue_final_message"]
                reply = messages[-2]["content"].rsplit("Reply: ", 1)[1]
                found = re.search(r"the answer is ([^.]+)\.", reply)
                text = (" " + found.group(1) if found else
                        " Agree" if "I agree" in reply else
                        " Disagree" if "you are wrong" in reply else " NONE")
            else:
                speaker = "A" if model == "model-a" else "B"
                text = self.say(speaker, family_of(messages), messages)
            return ChatResult(text=text, model=model + "-served", finish_reason="stop", prompt_tokens=10,
                              completion_tokens=len(text.split()))
        finally:
            self.in_flight -= 1


def grow(backend, questions=(Q,), extract_mode="prompt", **cfg):
    """Grow with the extractor model reading every turn (``prompt``), so each turn makes one extraction request
    these scheduling tests can count; the reader's own steps are tested in test_extraction.py."""
    engine = GrowthEngine(backend, GrowConfig(**cfg), MODELS, extract_mode)
    return asyncio.run(engine.grow(list(questions)))


def stubborn(speaker, family, messages):
    """A always says Milton, B always Shakespeare: nobody ever agrees, so the tree is full."""
    answer = "Milton" if speaker == "A" else "Shakespeare"
    return f"{speaker} ({family}) thinks the answer is {answer}."


def test_full_training_tree_has_the_papers_shape():
    (tree,) = grow(Scripted(stubborn))
    assert tree.status == "complete" and len(tree.nodes) == 21 == full_tree_size(GrowConfig())
    assert tree.depth_counts() == [1, 2, 6, 12]
    assert [n.id for n in tree.nodes] == list(range(21))
    assert all(tree.nodes[n.parent].depth == n.depth - 1 for n in tree.nodes[1:]) and tree.nodes[0].parent == -1
    by_depth = {d: [n for n in tree.nodes if n.depth == d] for d in range(4)}
    assert {n.speaker for n in by_depth[0] + by_depth[2]} == {"A"} and {n.speaker for n in by_depth[1] + by_depth[3]} == {"B"}
    assert [{n.role for n in by_depth[d]} for d in range(4)] == [{"independent"}, {"independent"}, {"persuader"}, {"persuadee"}]
    assert by_depth[0][0].family in {"rp", "lp"}
    assert [n.family for n in by_depth[1]] == ["rp", "ap"]
    assert [n.family for n in by_depth[2]] == ["lp", "ep", "cp"] * 2
    assert [n.family for n in by_depth[3]] == ["rp", "ap"] * 6
    for n in tree.nodes:  # answers keyed by speaker, each node its own
        assert (n.answer, n.correct, n.agree) == (("milton", True, False) if n.speaker == "A" else ("shakespeare", False, False))
    assert tree.models == {"A": "model-a-served", "B": "model-b-served", "extractor": "extractor-served"}
    assert tree.requests == 42 and tree.generated_tokens > 0


def test_every_request_is_sampled_and_seeded_and_extraction_is_greedy():
    backend = Scripted(stubborn)
    grow(backend)
    turns = [c for c in backend.calls if c[0] != "extractor"]
    assert {c[2] for c in turns} == {0.7}
    assert {c[2] for c in backend.calls if c[0] == "extractor"} == {0.0}
    assert len({c[3] for c in turns}) == 21  # a distinct, position-derived seed per turn
    assert {c[3] for c in backend.calls if c[0] == "extractor"} == {None}  # greedy extraction sends no seed
    backend = Scripted(stubborn)
    grow(backend, seed_requests=False)
    assert {c[3] for c in backend.calls} == {None}


def test_what_each_speaker_sees():
    backend = Scripted(stubborn)
    grow(backend)
    b_first = [m for model, m, *_ in backend.calls if model == "model-b" and len(m) == 1]
    assert len(b_first) == 2 and all("Milton" not in m[0]["content"] for m in b_first)  # independent first answer
    b_last = [m for model, m, *_ in backend.calls if model == "model-b" and len(m) == 3]
    assert len(b_last) == 12
    roles = [x["role"] for x in b_last[0]]
    assert roles == ["user", "assistant", "user"]
    assert "A (" in b_last[0][0]["content"] and b_last[0][1]["content"].startswith("B (")  # A's L0 merged into B's first message
    backend = Scripted(stubborn)
    grow(backend, independent_first=False)
    b_first = [m for model, m, *_ in backend.calls if model == "model-b" and m[0]["content"].count("Milton")]
    assert b_first, "with independent_first off, B's first turn sees A's answer"


@pytest.mark.parametrize(
    ("agree_at", "expected_sizes"),
    [
        # B's accept-branch first answer adopts Milton: that branch stops at depth 1.
        ({(1, "ap")}, [1, 2, 3, 6]),
        # A's emotional appeal adopts Shakespeare under both L1 nodes: those two L2 branches stop.
        ({(2, "ep")}, [1, 2, 6, 8]),
        # B gives in at the last turn: leaves anyway, but the agreement is recorded.
        ({(3, "ap")}, [1, 2, 6, 12]),
    ],
)
def test_agreement_stops_a_branch_at_any_depth(agree_at, expected_sizes):
    def say(speaker, family, messages):
        depth = _depth(messages, speaker)
        if (depth, family) in agree_at:
            other = "Shakespeare" if speaker == "A" else "Milton"
            return f"Fine, the answer is {other}."
        return stubborn(speaker, family, messages)

    (tree,) = grow(Scripted(say))
    assert tree.depth_counts() == expected_sizes
    agreed = [n for n in tree.nodes if n.agree]
    assert agreed and all((n.depth, n.family) in agree_at for n in agreed)
    assert all(not tree.children(n.id) for n in agreed)


def _depth(messages, speaker):
    """Recover the depth of the requested turn from the conversation the scripted engine receives."""
    first = messages[0]["content"]
    if len(messages) == 1:
        return 0 if speaker == "A" else (1 if "A (" not in first else 1)
    return 2 if speaker == "A" else 3


def test_agree_and_disagree_outcomes_resolve_by_speaker():
    def say(speaker, family, messages):
        depth = _depth(messages, speaker)
        if depth == 1 and family == "ap":
            return "I agree with you completely."  # Agree -> A's latest answer (Milton): correct, stops
        if depth == 2 and family == "lp":
            return "No, you are wrong about that."  # Disagree -> A's own previous answer
        return stubborn(speaker, family, messages)

    (tree,) = grow(Scripted(say))
    agree_node = next(n for n in tree.nodes if n.depth == 1 and n.family == "ap")
    assert (agree_node.outcome, agree_node.raw_answer, agree_node.answer, agree_node.correct, agree_node.agree) == \
        ("agree", None, "milton", True, True)
    disagree = [n for n in tree.nodes if n.depth == 2 and n.family == "lp"]
    assert [(n.outcome, n.answer, n.agree) for n in disagree] == [("disagree", "milton", False)]


def test_empty_and_garbled_turns_are_none_answers():
    def say(speaker, family, messages):
        return "" if speaker == "B" else "blah blah"

    backend = Scripted(say)
    (tree,) = grow(backend)
    assert tree.status == "complete"
    b_nodes = [n for n in tree.nodes if n.speaker == "B"]
    assert all(n.text == "" and n.outcome == "none" and n.answer is None and n.correct is False for n in b_nodes)
    a_nodes = [n for n in tree.nodes if n.speaker == "A"]
    assert all(n.outcome == "none" for n in a_nodes)
    extractions = [c for c in backend.calls if c[0] == "extractor"]
    assert len(extractions) == len(a_nodes)  # no extractor call for an empty turn


def test_eval_mode_is_one_greedy_standard_branch():
    backend = Scripted(stubborn)
    (tree,) = grow(backend, mode="eval")
    assert tree.depth_counts() == [1, 1, 1, 1] and {n.family for n in tree.nodes} == {"sp"}
    assert {c[2] for c in backend.calls} == {0.0} and {c[3] for c in backend.calls} == {None}


def test_b_as_persuader_changes_branching():
    (tree,) = grow(Scripted(stubborn), persuader="B", first_family="sp")
    assert tree.depth_counts() == [1, 3, 6, 18]
    assert tree.roles == {"persuader": "B", "persuadee": "A"}
    assert {n.role for n in tree.nodes if n.depth == 2} == {"persuadee"}


def test_ids_do_not_depend_on_request_order():
    rng = random.Random(0)
    trees = [grow(Scripted(stubborn, delay=lambda: rng.random() / 200), questions=[Q])[0] for _ in range(2)]
    assert [(n.id, n.parent, n.family, n.text) for n in trees[0].nodes] == [(n.id, n.parent, n.family, n.text) for n in trees[1].nodes]


def test_all_open_turns_are_in_flight_and_bounded():
    questions = [Question(id=f"q{i}", question=Q.question, answers=Q.answers) for i in range(4)]
    backend = Scripted(stubborn, delay=lambda: 0.005)
    grow(backend, questions=questions)
    assert backend.peak >= 24  # 4 trees x 6 L2 or 12 L3 turns overlap; depth-first would keep 1
    backend = Scripted(stubborn, delay=lambda: 0.005)
    grow(backend, questions=questions, max_in_flight=5)
    assert backend.peak <= 5


def test_a_failing_request_fails_only_its_tree(monkeypatch):
    monkeypatch.setattr(growth, "RetryPolicy", functools.partial(growth.RetryPolicy, base_s=0.0))
    bad = Question(id="bad", question="What is too long?", answers=["x"])

    def fail(model, messages):
        if "too long" in messages[0]["content"]:
            return EndpointError("prompt exceeds the context", status=400)

    trees = grow(Scripted(stubborn, fail=fail), questions=[Q, bad])
    assert [t.status for t in trees] == ["complete", "failed"]
    assert "request to 'model-a' failed: prompt exceeds the context" in trees[1].error
    assert trees[0].depth_counts() == [1, 2, 6, 12]


def test_transient_errors_are_retried_then_fail_the_tree(monkeypatch):
    monkeypatch.setattr(growth, "RetryPolicy", functools.partial(growth.RetryPolicy, base_s=0.0))
    attempts = {"n": 0}

    def flaky(model, messages):
        if model == "model-b" and attempts["n"] < 2:
            attempts["n"] += 1
            return EndpointError("overloaded", status=503)

    (tree,) = grow(Scripted(stubborn, fail=flaky), retries=3)
    assert tree.status == "complete" and attempts["n"] == 2

    (tree,) = grow(Scripted(stubborn, fail=lambda m, _: EndpointError("unreachable") if m == "model-b" else None), retries=2)
    assert tree.status == "failed" and "gave up after 3 attempts" in tree.error
    assert tree.nodes and all(n.speaker == "A" for n in tree.nodes)  # what was produced is kept


def test_schema_round_trip_through_arrow():
    trees = grow(Scripted(stubborn), questions=[Q, Question(id="mc", question="Pick B", answers=["B"], choices={"A": "x", "B": "y"})])
    table = pa.Table.from_pylist([to_row(t) for t in trees], schema=tree_schema())
    back = [from_row(r) for r in table.to_pylist()]
    assert back == trees


def test_sibling_turns_share_everything_but_the_family_instruction():
    """The layout that lets the engine's prefix cache skip most prefill (siblings differ only at the end)."""
    backend = Scripted(stubborn)
    grow(backend)
    last_level = [m for model, m, *_ in backend.calls if model == "model-b" and len(m) == 3]
    by_parent = {}
    for messages in last_level:  # key: everything but the final instruction, i.e. the shared transcript
        key = repr(messages[:-1]) + messages[-1]["content"].rsplit("\n\n", 1)[0]
        by_parent.setdefault(key, []).append(messages)
    assert len(by_parent) == 6 and all(len(group) == 2 for group in by_parent.values())  # 6 parents x (rp, ap)
    for rp, ap in by_parent.values():
        assert rp[:-1] == ap[:-1]
        shared = rp[-1]["content"].rsplit("\n\n", 1)[0]
        assert ap[-1]["content"].startswith(shared) and rp[-1]["content"] != ap[-1]["content"]
    openings = {m[0]["content"].split("\n\n")[0] for _, m, *_ in backend.calls if _ != "extractor"}
    assert len({o for o in openings if o.startswith("You are answering")}) == 1  # one opening for the tree


class Ordered(Scripted):
    """Logs when each request starts and ends, to check which requests overlap."""

    def __init__(self, say):
        super().__init__(say, delay=lambda: 0.002)
        self.events = []

    async def chat(self, model, messages, **kw):
        tag = (model, len(messages), messages[-1]["content"][-60:])
        self.events.append(("start", tag))
        try:
            return await super().chat(model, messages, **kw)
        finally:
            self.events.append(("end", tag))


def test_children_start_while_the_parents_answer_is_extracted():
    backend = Ordered(stubborn)
    grow(backend)
    first_extraction_end = next(i for i, (kind, tag) in enumerate(backend.events) if kind == "end" and tag[0] == "extractor")
    first_b_start = next(i for i, (kind, tag) in enumerate(backend.events) if kind == "start" and tag[0] == "model-b")
    assert first_b_start < first_extraction_end  # B's turns did not wait for A's answer to be extracted


def test_speculative_children_of_an_agreeing_turn_are_dropped():
    def say(speaker, family, messages):
        if speaker == "B" and _depth(messages, speaker) == 1 and family == "ap":
            return "Fine, the answer is Milton."  # agrees with A: this branch stops
        return stubborn(speaker, family, messages)

    spec_backend, plain_backend = Scripted(say), Scripted(say)
    (spec,) = grow(spec_backend)
    (plain,) = grow(plain_backend, speculative=False)
    shape = lambda t: [(n.id, n.parent, n.depth, n.family, n.text) for n in t.nodes]
    assert shape(spec) == shape(plain) and spec.depth_counts() == [1, 2, 3, 6]
    assert plain.requests == 2 * 12  # every recorded turn and its extraction, nothing else
    assert spec.requests >= plain.requests  # speculation may have spent requests on the stopped branch


def test_auto_extraction_reads_clear_turns_without_a_request_and_constrains_the_rest():
    """extract.mode auto: "X (rp) thinks the answer is Milton." is read by the deterministic reader (no
    extraction request); a turn it cannot settle goes to the extractor with a structured-output choice."""
    def say(speaker, family, messages):
        if speaker == "B" and len(messages) == 1:
            return "Shakespeare is great, but Milton is greater still."  # two names, no answer clause
        return stubborn(speaker, family, messages)

    backend = Scripted(say)
    (tree,) = grow(backend, extract_mode="auto", depth=2)
    extractions = [c for c in backend.calls if c[0] == "extractor"]
    assert tree.status == "complete" and len(extractions) == 2  # the two independent B turns only
    assert {n.read_by for n in tree.nodes if n.depth == 0} == {"rule"}
    assert {n.read_by for n in tree.nodes if n.depth == 1} == {"constrained"}
    assert all(c[1][-1] == {"role": "assistant", "content": "Final Answer:"} for c in extractions)


def test_every_request_carries_the_papers_sampling_fields():
    """Issue 13.5: only temperature and max_tokens were sent, so vLLM applied the model's generation_config.json
    (Llama-3.1-Instruct: top_p 0.9) and nothing asked for the paper's minimum of 8 new tokens (§1.6)."""
    for mode in ("train", "eval"):
        backend = Scripted(stubborn)
        grow(backend, mode=mode)
        turns = [c for c in backend.calls if c[0] != "extractor"]
        assert turns and all(c[4]["top_p"] == 1.0 and c[4]["top_k"] == 0 and c[4]["min_tokens"] == 8 for c in turns)
        extractions = [c for c in backend.calls if c[0] == "extractor"]
        assert extractions and all(c[4]["top_p"] == 1.0 and c[4]["repetition_penalty"] == 1.0 for c in extractions)
    backend = Scripted(stubborn)
    grow(backend, top_p=0.9, top_k=40, min_tokens=0)
    assert {(c[4]["top_p"], c[4]["top_k"], c[4]["min_tokens"]) for c in backend.calls if c[0] != "extractor"} == {(0.9, 40, 0)}


def test_trees_and_pairs_load_with_datasets_and_old_map_trees_still_read(tmp_path):
    """Issue 17: `datasets.load_dataset("parquet")` could not load trees (Arrow map columns); schema 3 writes
    mappings as {key, value} lists. Trees of schema 2, with their maps, still read."""
    import pyarrow.parquet as pq
    from datasets import load_dataset

    from pbt_ray.dialogue.pipeline import read_trees, write_trees
    from pbt_ray.preferences.pairs import write_pairs
    from pbt_ray.preferences.canonical import mine_tree
    from tests.unit.pbt_fixtures import fixture_tree

    mc = Question(id="mc", question="Pick B", answers=["B"], choices={"A": "x", "B": "y"})
    trees = grow(Scripted(stubborn), questions=[Q, mc])
    write_trees(trees, tmp_path)
    loaded = load_dataset("parquet", data_dir=str(tmp_path / "trees"), split="train")
    assert sorted(loaded["tree_id"]) == sorted(t.tree_id for t in trees)
    row = loaded.filter(lambda r: r["question_id"] == "mc")[0]
    assert {c["key"]: c["value"] for c in row["choices"]} == {"A": "x", "B": "y"} and len(row["nodes"]) > 1
    (tmp_path / "pairs").mkdir()
    write_pairs(mine_tree(fixture_tree("F1")).pairs, tmp_path / "pairs" / "train.parquet")
    pairs = load_dataset("parquet", data_files=str(tmp_path / "pairs" / "train.parquet"), split="train")
    assert len(pairs) > 0 and {"chosen", "rejected"} <= set(pairs.column_names)

    # A schema-2 file: the same trees with Arrow maps, as pbt-ray wrote them before.
    old_schema = tree_schema()
    for name in ("choices", "models", "roles"):
        old_schema = old_schema.set(old_schema.get_field_index(name), pa.field(name, pa.map_(pa.string(), pa.string())))
    old_rows = []
    for t in trees:
        r = to_row(t)
        r["schema_version"] = 2
        for name in ("choices", "models", "roles"):
            r[name] = None if r[name] is None else [(kv["key"], kv["value"]) for kv in r[name]]
        old_rows.append(r)
    old_dir = tmp_path / "old"
    (old_dir / "trees").mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(old_rows, schema=old_schema), old_dir / "trees" / "part-old.parquet")
    again = {t.tree_id: t for t in read_trees(old_dir)}
    assert {t.tree_id: (t.choices, t.models, t.roles) for t in again.values()} == \
        {t.tree_id: (t.choices, t.models, t.roles) for t in trees}
