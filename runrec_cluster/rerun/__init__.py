"""Reruns from the record: the code materialized, overrides applied, generated values pinned.

- core.py: ``rerun()``, ``rerun_sweep()`` and ``order_with_reruns()`` (reruns after originals)
- plan.py: what a rerun will do, checked before anything is created: inputs, backend, hardware,
  the intended differences
- materialize.py: the recorded code as a worktree with the recorded patch applied
- overrides.py: ``--set`` overrides coerced, applied to arguments or argv; pinned generated values
- call.py: ``RerunCall``, what the job of a rerun of a function run calls

``RerunCall`` is re-exported here so that call blobs pickled before the package existed
(``runrec_cluster.rerun.RerunCall``) still load.
"""

from runrec_cluster.rerun.call import RerunCall
from runrec_cluster.rerun.core import order_with_reruns, rerun, rerun_sweep

__all__ = ["RerunCall", "order_with_reruns", "rerun", "rerun_sweep"]
