"""Protocol runners: expand a recipe into the runs and evaluations a protocol prescribes."""
