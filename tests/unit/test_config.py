"""Configs: presets load, overrides apply, bad values are rejected with the field and its origin."""

import pytest

from pbt_ray.config import ConfigError, PBTConfig, dump_config, load_config, preset_names


def test_presets_load_and_validate():
    assert {"local", "gpu-paper"} <= set(preset_names())
    local = load_config("local")
    assert [m.source for m in local.serve.models] == ["embedded"]
    assert set(local.serve.roles) == {"persuader", "persuadee", "extractor"}
    assert local.serve.host == "127.0.0.1"
    model = local.serve.models[0]
    assert (model.accelerator, model.dtype, model.eager, model.trust_remote_code) == ("cpu", "float32", True, False)

    gpu = load_config("gpu-paper")
    sources = {m.source for m in gpu.serve.models}
    assert sources == {"meta-llama/Llama-3.1-8B-Instruct", "mistralai/Mistral-7B-Instruct-v0.2"}
    assert all(m.accelerator == "gpu" and not m.eager for m in gpu.serve.models)
    assert gpu.serve.roles["extractor"] == "mistral-7b-instruct-v0.2"


def test_dotted_overrides_apply_with_yaml_typing():
    cfg = load_config("gpu-paper", ["serve.port=8123", "serve.models.1.max_replicas=8", "ray.include_dashboard=false",
                                    "ray.env_vars.FOO=bar", "debate.question=Who wrote Hamlet?", "name=exp-1"])
    assert cfg.serve.port == 8123
    assert cfg.serve.models[1].max_replicas == 8
    assert cfg.ray.include_dashboard is False
    assert cfg.ray.env_vars == {"FOO": "bar"}
    assert cfg.debate.question == "Who wrote Hamlet?"
    assert str(cfg.run_dir).endswith("runs/exp-1")


def test_dump_roundtrips(tmp_path):
    cfg = load_config("local", ["serve.port=9001"])
    path = tmp_path / "dumped.yaml"
    path.write_text(dump_config(cfg))
    assert load_config(path) == cfg


def test_file_extends_a_preset(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("extends: local\nname: mine\nserve:\n  port: 8100\n")
    cfg = load_config(path)
    assert (cfg.name, cfg.serve.port, cfg.serve.models[0].source) == ("mine", 8100, "embedded")


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (["serve.prot=1"], "serve.prot: unknown field; did you mean 'port'? [from override 'serve.prot=1']"),
        (["serve.port=abc"], "serve.port: Input should be a valid integer"),
        (["serve.port=70000"], "serve.port: Input should be less than or equal to 65535"),
        (["serve.models.0.min_replicas=3"], "min_replicas (3) is larger than max_replicas (1) [from override"),
        (["serve.roles.extractor=nope"], "role 'extractor' points at 'nope', which is not a served model id"),
        (["serve.models.0.dtype=float64"], "serve.models.0.dtype: Input should be"),
        (["serve.models.0.engine_kwargs={model: x}"], "not engine_kwargs"),
        (["grow.temperature=-1"], "grow.temperature: Input should be greater than or equal to 0"),
        (["grow.min_growers=3"], "min_growers (3) is larger than max_growers (2)"),
        (["name=../escape"], "name: Value error, must be a plain directory name"),
    ],
)
def test_bad_values_name_field_and_origin(overrides, expected):
    with pytest.raises(ConfigError) as err:
        load_config("local", overrides)
    assert expected in str(err.value)


def test_bad_value_in_file_names_the_file(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("extends: local\nserve:\n  port: -5\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert "serve.port" in str(err.value) and str(path) in str(err.value)


def test_unknown_preset_suggests_and_lists():
    with pytest.raises(ConfigError, match=r"Unknown preset 'lokal'. Did you mean 'local'\?.*gpu-paper"):
        load_config("lokal")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("serve: [1, 2", "not valid YAML"),
        ("- just\n- a list\n", "top level must be a mapping"),
        ("extends: nonexistent-preset\n", "Unknown preset 'nonexistent-preset'"),
    ],
)
def test_malformed_files(tmp_path, text, expected):
    path = tmp_path / "broken.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=expected):
        load_config(path)


def test_missing_file_and_bad_override_syntax(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="not of the form section.field=value"):
        load_config("local", ["serve.port"])
    with pytest.raises(ConfigError, match="list index below 1"):
        load_config("local", ["serve.models.5.id=x"])


def test_duplicate_model_ids_and_missing_roles_rejected():
    base = load_config("gpu-paper").model_dump()
    base["serve"]["models"][1]["id"] = base["serve"]["models"][0]["id"]
    with pytest.raises(ValueError, match="model ids must be unique"):
        PBTConfig.model_validate(base)
    base = load_config("local").model_dump()
    del base["serve"]["roles"]["extractor"]
    with pytest.raises(ValueError, match=r"roles must name a model for \['extractor'\]"):
        PBTConfig.model_validate(base)


def test_cpu_models_reject_gpu_only_settings():
    with pytest.raises(ConfigError, match="need accelerator: gpu"):
        load_config("local", ["serve.models.0.tensor_parallel_size=2"])


def test_each_run_gets_its_own_serve_app_and_route():
    """Two runs on one cluster used to deploy the same app `pbt-debaters` on `/`, the second replacing the first."""
    a, b = load_config("local", ["name=a"]), load_config("local", ["name=b"])
    assert (a.serve.app_name, a.serve.route_prefix) == ("pbt-a", "/a")
    assert (b.serve.app_name, b.serve.route_prefix) == ("pbt-b", "/b")
    odd = load_config("local", ["name=my run 1"])
    assert odd.serve.app_name == "pbt-my-run-1" and odd.serve.route_prefix == "/my-run-1"
    fixed = load_config("local", ["name=a", "serve.app_name=shared", "serve.route_prefix=/"])
    assert (fixed.serve.app_name, fixed.serve.route_prefix) == ("shared", "/")  # set explicitly: as given
