"""Generated arithmetic items with computed answers (the embedded default's numeric task): seeded, so the same
config gives the same items; small enough that a 135M receiver gets some right and a hint can matter."""

from __future__ import annotations

import random

from pbt_ray.questions import Question


def arithmetic_items(n: int, seed: int = 12) -> list[Question]:
    rng = random.Random(seed)
    items = []
    for i in range(n):
        a, b, c = rng.randint(2, 40), rng.randint(2, 40), rng.randint(2, 9)
        kind = i % 3
        if kind == 0:
            text, value = f"What is {a} + {b}?", a + b
        elif kind == 1:
            text, value = f"What is {a} + {b} - {c}?", a + b - c
        else:
            text, value = f"What is {c} times {b}?", c * b
        items.append(Question(id=f"arith-{i:03d}", question=text, answers=[str(value)], source="generated:arithmetic"))
    return items
