"""The bundled demo question sets."""

from pbt_ray.questions import load_bundled


def test_bundled_sets_load_with_unique_ids():
    trivia = load_bundled("trivia")
    mc = load_bundled("commonsense")
    assert len(trivia) >= 300 and len(mc) >= 100
    assert trivia[0].question == "What is the capital of France?" and trivia[0].answers == ["Paris"]
    for questions in (trivia, mc):
        assert len({q.id for q in questions}) == len(questions)
    assert all(q.choices and set(q.answers) <= set(q.choices) for q in mc)
