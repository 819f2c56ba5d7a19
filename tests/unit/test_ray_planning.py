"""Sizing the Ray executor's worker pool, and the checks made before Ray starts (no Ray needed)."""

from __future__ import annotations

import sys

import pytest

from stillroom.errors import ConfigError
from stillroom.llm import LlamaCppConfig, OpenAIConfig, TransformersConfig
from stillroom.llm.vllm_backend import VLLMConfig
from stillroom.pipeline.pipeline import RunOptions
from stillroom.pipeline.ray_executor import _subtract, plan_workers, ray_module

SERVER = OpenAIConfig(model="m", base_url="http://127.0.0.1:1/v1")


def ray_options(**given: object) -> RunOptions:
    return RunOptions(executor="ray", **given)  # type: ignore[arg-type]


def test_a_worker_per_cpu_for_server_backends() -> None:
    assert plan_workers({"CPU": 6.0}, [SERVER], ray_options()) == (6, 0)
    assert plan_workers({"CPU": 6.0}, [SERVER], ray_options(cpus_per_worker=2.0)) == (3, 0)
    assert plan_workers({"CPU": 6.0}, [SERVER], ray_options(workers=4)) == (4, 0)


def test_a_local_gpu_engine_gets_its_gpus_per_worker() -> None:
    vllm = VLLMConfig(model="/models/llama", tensor_parallel_size=2)
    # 8 GPUs, 2 per replica: 4 data-parallel replicas, CPUs permitting.
    assert plan_workers({"CPU": 64.0, "GPU": 8.0}, [SERVER, vllm], ray_options()) == (4, 2)
    assert plan_workers({"CPU": 3.0, "GPU": 8.0}, [vllm], ray_options()) == (3, 2)
    on_cuda = TransformersConfig(model="/models/student", device="cuda")
    assert plan_workers({"CPU": 16.0, "GPU": 4.0}, [on_cuda], ray_options()) == (4, 1)
    # An explicit share overrides what the backends ask for.
    assert plan_workers({"CPU": 16.0, "GPU": 4.0}, [on_cuda],
                        ray_options(gpus_per_worker=0.5)) == (8, 0.5)
    assert TransformersConfig(device="auto").gpus_per_replica() == 0
    assert LlamaCppConfig().gpus_per_replica() == 0


def test_what_the_cluster_cannot_hold_is_refused() -> None:
    vllm = VLLMConfig(model="/models/llama")
    with pytest.raises(ConfigError, match="1 GPU") as no_gpu:
        plan_workers({"CPU": 8.0}, [vllm], ray_options())
    assert no_gpu.value.key == "gpus_per_worker"
    with pytest.raises(ConfigError, match="at most 2 fit") as too_many:
        plan_workers({"CPU": 2.0}, [SERVER], ray_options(workers=3))
    assert too_many.value.key == "workers"


def test_ray_options_need_the_ray_executor() -> None:
    with pytest.raises(ConfigError, match="workers only apply") as error:
        RunOptions(workers=2)
    assert error.value.key == "workers"
    with pytest.raises(ConfigError, match="unknown executor"):
        RunOptions(executor="dask")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="at least 1"):
        RunOptions(executor="ray", workers=0)


def test_missing_ray_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(ConfigError, match=r"pip install 'stillroom\[ray\]'"):
        ray_module()


def test_worker_statistics_are_sent_as_differences() -> None:
    before = {"stages": {"a": {"rows_in": 3, "seconds": 1.5}},
              "backends": {"t": {"model": "m", "responses": 2, "errors": {"RateLimitError": 1}}}}
    now = {"stages": {"a": {"rows_in": 10, "seconds": 2.0}},
           "backends": {"t": {"model": "m", "responses": 9,
                              "errors": {"RateLimitError": 1, "APITimeoutError": 2}}}}
    assert _subtract(now, before) == {
        "stages": {"a": {"rows_in": 7, "seconds": 0.5}},
        "backends": {"t": {"model": "m", "responses": 7,
                           "errors": {"RateLimitError": 0, "APITimeoutError": 2}}},
    }
