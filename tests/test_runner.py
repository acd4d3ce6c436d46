"""Actor pools sized from the cluster: what runs where, before any actor starts."""

from pipeline.run.routing import size_pools
from tests.helpers import job

ROWS = {"id": ["a"], "prompt": ["a mug"]}


def pools(tmp_path, resources, cluster=""):
    return size_pools(job(tmp_path, ROWS, styles=None, extra=f"[cluster]\n{cluster}\n"), resources)


def test_cpu_only_node_writes_on_the_generate_actor(tmp_path):
    # The generate actor uses every core: a writer beside it would only preempt it.
    p = pools(tmp_path, {"CPU": 2.0})
    assert (p.generate_actors, p.gpus_per_actor, p.write_actors) == (1, 0.0, 0)
    assert p.cpus_per_actor < 1  # a whole-CPU actor would starve Ray's own tasks on 2 cores


def test_cpu_generation_with_fewer_threads_than_cores_gets_writers(tmp_path):
    p = pools(tmp_path, {"CPU": 8.0}, "torch_threads = 4")
    assert p.write_actors == 7  # the 7.5 CPUs left after the 0.5-CPU generate actor, whole


def test_gpu_cluster_gets_one_generate_actor_per_gpu_and_writers_from_spare_cpus(tmp_path):
    p = pools(tmp_path, {"CPU": 16.0, "GPU": 2.0})
    assert (p.generate_actors, p.gpus_per_actor) == (2, 1.0)
    assert p.write_actors == 15
    half = pools(tmp_path / "half", {"CPU": 64.0, "GPU": 1.0}, "gpus_per_actor = 0.5")
    assert (half.generate_actors, half.write_actors) == (2, 32)  # writers capped at 32


def test_explicit_counts_win(tmp_path):
    p = pools(tmp_path, {"CPU": 2.0}, "write_actors = 1\ngenerate_actors = 1")
    assert (p.generate_actors, p.write_actors) == (1, 1)


def test_device_cpu_on_a_gpu_cluster_generates_on_cpu(tmp_path):
    p = size_pools(job(tmp_path, ROWS, styles=None, extra='[models]\ndevice = "cpu"\n'), {"CPU": 4.0, "GPU": 1.0})
    assert (p.gpus_per_actor, p.write_actors) == (0.0, 0)


def test_actors_get_the_settings_they_need_and_never_credentials(monkeypatch):
    from pipeline.run.runner import actor_env

    for key, value in {"ASSET_PIPELINE_MODELS": "/m", "HF_HUB_OFFLINE": "1", "AWS_ENDPOINT_URL": "http://s3.local",
                       "AWS_REGION": "eu-west-1", "AWS_ACCESS_KEY_ID": "AKIA", "AWS_SECRET_ACCESS_KEY": "secret",
                       "AWS_SESSION_TOKEN": "token", "UNRELATED": "x"}.items():
        monkeypatch.setenv(key, value)
    env = actor_env()
    assert env == {"ASSET_PIPELINE_MODELS": "/m", "HF_HUB_OFFLINE": "1", "AWS_ENDPOINT_URL": "http://s3.local",
                   "AWS_REGION": "eu-west-1"}


def test_a_driver_started_by_ray_job_submit_joins_its_cluster_as_such(monkeypatch):
    # `ray job submit` sets RAY_ADDRESS and passes no --address: the driver joins that cluster,
    # so it sends the actors their settings and no local-instance options (Ray refuses those).
    import ray

    from pipeline.run import runner

    seen = {}
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", lambda **kw: seen.update(kw))
    monkeypatch.setattr(ray, "cluster_resources", lambda: {"CPU": 4.0})
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.5:6379")
    monkeypatch.setenv("ASSET_PIPELINE_MODELS", "/m")
    assert runner.connect(None) == {"CPU": 4.0}
    assert "_system_config" not in seen and seen["runtime_env"] == {"env_vars": runner.actor_env()}
    assert seen["address"] == "10.0.0.5:6379"
