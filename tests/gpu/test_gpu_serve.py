"""GPU path of the debater app (CUDA vLLM from the gpu profile); skipped where no GPU is present.

Run on a GPU machine with the gpu profile installed: `pytest -m gpu tests/gpu`.
"""

import shutil

import pytest

pytestmark = pytest.mark.gpu


def _has_cuda() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:
        return False


@pytest.mark.skipif(not _has_cuda(), reason="needs a CUDA GPU and the gpu install profile")
def test_embedded_model_serves_on_gpu(tmp_path):
    import openai

    from pbt_ray.config import load_config
    from pbt_ray.runtime import ray_cluster
    from pbt_ray.serving.app import deploy, wait_ready

    assert shutil.which("nvidia-smi"), "CUDA torch without nvidia-smi: check the driver"
    cfg = load_config("local", [
        "serve.models.0.accelerator=gpu", "serve.models.0.dtype=auto", "serve.models.0.gpu_memory_utilization=0.3",
        "serve.port=8731", f"runs_dir={tmp_path}",
    ])
    with ray_cluster(cfg):
        deploy(cfg)
        url = wait_ready(cfg, timeout_s=900)
        reply = openai.OpenAI(base_url=url, api_key="none").chat.completions.create(
            model="persuadee", messages=[{"role": "user", "content": "What is the capital of France?"}],
            temperature=0, max_tokens=32,
        )
    assert "Paris" in reply.choices[0].message.content
