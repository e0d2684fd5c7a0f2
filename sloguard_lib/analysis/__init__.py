"""After the studies: multi-seed statistics, the report, the simulator's fidelity and the trial inspector."""
