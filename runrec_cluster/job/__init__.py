"""What runs on the node, the same on every backend.

- execute.py: ``execute(store, run_id)``: capture the node, mark the run running, run the function
  or command, record the outcome (and ``python -m runrec_cluster.job.execute STORE RUN_ID``)
- run.py: ``Run`` and ``current_run()``: what a job adds to its own record while it runs
- commands.py: a command job (``submit_command``): the subprocess, its signals, its exit code
- outcome.py: the end of a run: the result, the failure, and the rescue when the store refuses
- watchdog.py: runrec's own time limit, for backends that have none (local, Ray)
"""
