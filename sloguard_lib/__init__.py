"""SLO-Guard: crash-aware autotuning of vLLM serving knobs for goodput under latency SLOs.

Data flow of one trial, top to bottom::

    space -> optimizer.ask -> engine.launch -> server.run_load -> metrics -> slo/goodput
          -> trial_log.append (fsync) -> optimizer.tell
"""

__version__ = "0.1.0"
