"""Cluster stage: the resources section, placement-group bundles, the memory planner.

``vt_ray.config`` is imported first on purpose: its package ``__init__`` loads the schema, which imports
``vt_ray.config.resources``; entering through ``vt_ray.config.resources`` first would otherwise hit that cycle
half-initialised.
"""

import vt_ray.config  # noqa: F401  (import order, see above)
