"""`ray job submit` entrypoint for `pbt serve`: deploys the debater app on the cluster and returns once it
is ready; the app keeps running after the job ends (remove it with `serve delete pbt-<run name>`).

    ray job submit --address http://HEAD:8265 --runtime-env jobs/runtime_env.yaml -- \
        python jobs/serve.py -c gpu-paper serve.host=0.0.0.0 ray.autoscaling=true

For a long-lived endpoint under Kubernetes prefer the RayService in deployments/kuberay/.
"""

import sys

from pbt_ray.cli import main

if __name__ == "__main__":
    sys.exit(main(["serve", *sys.argv[1:]]))
