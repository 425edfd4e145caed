"""runrec-cluster's Hydra launcher plugin (``hydra/launcher=runrec_local|runrec_slurm|runrec_ray``).

Hydra discovers plugins by importing every module under the ``hydra_plugins`` namespace package
(which has no ``__init__.py``; this package ships inside runrec-cluster, ``pip install
'runrec-cluster[hydra]'``). The logic lives in ``runrec_cluster.hydra``; see docs/adopting.md.
"""
