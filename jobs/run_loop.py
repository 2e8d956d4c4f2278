"""`ray job submit` entrypoint for the main job: parses the same arguments as `pbt run`.

    ray job submit --address http://HEAD:8265 --runtime-env jobs/runtime_env.yaml -- \
        python jobs/run_loop.py -c gpu-paper serve.host=0.0.0.0

Inside a job RAY_ADDRESS is set, so the loop joins that cluster instead of starting one.
"""

import sys

from pbt_ray.cli import main

if __name__ == "__main__":
    sys.exit(main(["run", *sys.argv[1:]]))
