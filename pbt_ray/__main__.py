import sys

from pbt_ray.cli import main

sys.exit(main())
