"""`ray job submit` entrypoint for `pbt report`: parses the same arguments.

    ray job submit --address http://HEAD:8265 --runtime-env jobs/runtime_env.yaml -- \
        python jobs/report.py -c gpu-paper

Inside a job RAY_ADDRESS is set, so the stage joins that cluster instead of starting one.
"""

import sys

from pbt_ray.cli import main

if __name__ == "__main__":
    sys.exit(main(["report", *sys.argv[1:]]))
