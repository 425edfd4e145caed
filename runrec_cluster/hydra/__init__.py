"""The Hydra launcher: ``hydra/launcher=runrec_local|runrec_slurm|runrec_ray`` runs a
``--multirun`` as one runrec sweep (docs/adopting.md, "From hydra-submitit-launcher").

``config`` (the launcher configs and their translation to ``rr.Executor``), ``provenance`` (a
job's composed config with Hydra's provenance per key), ``launcher`` (``RunrecLauncher``),
``job`` (what runs on the node). Hydra finds the plugin through the ``hydra_plugins``
namespace package at the repository root (``hydra_plugins/runrec_launcher``). The modules
import hydra-core (the ``hydra`` extra): import them only where Hydra is installed.
"""
