"""Capture: look at the world (the code, the environment, the node, the inputs) and return record
Structs, each written into a run's record by the submit side (``api``) or the job side (``job``).

- git.py: the code (commit, branch, the uncommitted change as a re-applicable patch, submodules)
- env.py: the launch environment (Python, platform, installed distributions, selected variables)
- node.py: the node where the job runs (host, CPU, memory, GPUs through NVML, CUDA libraries)
- config.py: the effective config (bound arguments, defaults, generated values, provenance)
- data.py: datasets and artifacts by content hash (BLAKE3 or SHA-256, the hash cache format)
- inputs.py: a run's inputs (hash_input) and artifact references (Artifact, RUN:name, NAME@vN)
- proc.py: process identity that survives PID reuse, and current_user() (the one user rule)
- redact.py: what user text may reach a record (secrets redacted, no control characters)
- hardware.py: hardware classes (the expected node facts) and the check against a node
"""
