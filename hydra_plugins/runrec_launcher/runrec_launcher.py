"""The launcher classes Hydra instantiates (``_target_`` of the ``runrec_*`` launcher configs)
and the configs' registration in Hydra's ConfigStore, at import (Hydra's plugin scan).

Hydra instantiates only plugin classes defined under ``hydra_plugins``: these are thin
subclasses of ``runrec_cluster.hydra.launcher.RunrecLauncher``, differing by backend only.
"""

from runrec_cluster.hydra import config as _config
from runrec_cluster.hydra import launcher as _launcher


class RunrecLocalLauncher(_launcher.RunrecLauncher):
    """``hydra/launcher=runrec_local``: the jobs run on this machine, under a runrec supervisor."""

    backend = "local"


class RunrecSlurmLauncher(_launcher.RunrecLauncher):
    """``hydra/launcher=runrec_slurm``: the jobs run as one Slurm array."""

    backend = "slurm"


class RunrecRayLauncher(_launcher.RunrecLauncher):
    """``hydra/launcher=runrec_ray``: the jobs run as Ray tasks."""

    backend = "ray"


_config.register_configs()
