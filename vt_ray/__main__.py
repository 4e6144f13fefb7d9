import sys

from vt_ray.cli import main

if __name__ == "__main__":  # the guard matters: vLLM starts worker processes with spawn
    sys.exit(main())
