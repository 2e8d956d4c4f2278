"""`ray job submit` entrypoint for mining: parses the same arguments as `pbt mine`.

    ray job submit --address http://HEAD:8265 --runtime-env jobs/runtime_env.yaml -- \
        python jobs/mine.py -c gpu-paper --trees /mnt/shared/runs/paper --out /mnt/shared/runs/paper/preferences

Inside a job RAY_ADDRESS is set, so the Ray Data tasks (one per tree file) run on that cluster; the tree
files must be on storage every node sees.
"""

import sys

from pbt_ray.cli import main

if __name__ == "__main__":
    sys.exit(main(["mine", *sys.argv[1:]]))
