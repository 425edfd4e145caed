"""Capture: pure functions that look at the world and return record Structs.

git.py (code), env.py (launch environment), node.py (hardware where the job runs),
data.py (datasets and artifacts by content hash).
"""
