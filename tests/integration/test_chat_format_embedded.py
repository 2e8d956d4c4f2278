"""The embedded SmolLM2's own chat template takes every message shape the project sends, as built: what
``chat_format.EMBEDDED_FORMAT`` assumes so that deploys and unit tests never load its tokenizer (issue 13.9)."""

import pytest

from pbt_ray.serving.chat_format import EMBEDDED_FORMAT, probe, tokenizer_render

pytestmark = pytest.mark.integration


def test_the_embedded_tokenizer_probes_native():
    # The converted embedded model's tokenizer (the GGUF is converted first where this machine has no cache).
    assert probe(tokenizer_render("embedded"), "embedded") == EMBEDDED_FORMAT == "native"
