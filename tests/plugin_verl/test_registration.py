"""Registration in fresh processes, as verl's driver and its Ray workers get it: through
``VERL_USE_EXTERNAL_MODULES=editalign_verl`` (with verl's entry-point discovery switched
off, so the variable alone is tested), through the ``verl.plugins`` entry point alone, and
neither (the names are then absent: the check can fail)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent("""
    import json, sys

    def names():
        import verl  # verl's import runs VERL_USE_EXTERNAL_MODULES and its entry points
        from verl.experimental.reward_loop.reward_manager.registry import REWARD_MANAGER
        from verl.trainer.ppo.core_algos import ADV_ESTIMATOR_REGISTRY

        return {"estimator": "editalign_dense_group" in ADV_ESTIMATOR_REGISTRY,
                "manager": "editalign" in REWARD_MANAGER,
                "lazy": not any(m in sys.modules for m in (
                    "editalign.reward_model", "editalign.reward_sources", "editalign.train"))}

    result = {"driver": names()}
    if sys.argv[1] == "ray":
        import ray

        ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)
        result["worker"] = ray.get(ray.remote(names).remote())
        ray.shutdown()
    print("RESULT " + json.dumps(result))
""")


def start(env_vars, mode="driver"):
    env = {k: v for k, v in os.environ.items()
           if k not in ("VERL_USE_EXTERNAL_MODULES", "VERL_USE_EXTERNAL_PLUGINS")}
    env.update(env_vars, OMP_NUM_THREADS="1", RAY_USAGE_STATS_ENABLED="0")
    return subprocess.Popen([sys.executable, "-c", SCRIPT, mode], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def result(process, timeout=300):
    out, err = process.communicate(timeout=timeout)
    assert process.returncode == 0, err[-3000:]
    line = next(line for line in out.splitlines() if line.startswith("RESULT "))
    return json.loads(line.removeprefix("RESULT "))


def test_registered_in_driver_and_ray_worker_by_env_and_by_entry_point_only():
    # Started together: each pays verl's import (~15 s here) at the same time.
    by_env = start({"VERL_USE_EXTERNAL_MODULES": "editalign_verl",
                    "VERL_USE_EXTERNAL_PLUGINS": "none"}, mode="ray")
    by_entry_point = start({})  # verl's default: VERL_USE_EXTERNAL_PLUGINS=auto
    neither = start({"VERL_USE_EXTERNAL_PLUGINS": "none"})
    registered = {"estimator": True, "manager": True, "lazy": True}
    assert result(by_env) == {"driver": registered, "worker": registered}
    assert result(by_entry_point) == {"driver": registered}
    assert result(neither) == {"driver": {"estimator": False, "manager": False, "lazy": True}}
