"""``make bench``: every benchmark in turn, each printing its own figures (nothing here asserts on time)."""

from __future__ import annotations

import importlib
import sys

BENCHMARKS = ("benchmarks.rollout_throughput", "benchmarks.curation_throughput", "benchmarks.learner_load_memory",
              "benchmarks.data_formats", "benchmarks.weight_sync", "benchmarks.shard_gather", "benchmarks.fixed_costs",
              "benchmarks.async_modes", "benchmarks.trl_head_to_head")


def main() -> int:
    for name in BENCHMARKS:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as err:
            if err.name != name:
                raise
            print(f"[bench] {name}: not present, skipped", flush=True)
            continue
        print(f"[bench] {name}", flush=True)
        module.main()
    return 0


if __name__ == "__main__":
    sys.exit(main())
