"""Measuring every stage on this machine. In: fonts, records, TrainConfigs and exported models, as
plain arguments. Out: figures (each the median over repeats, in its own process) held to their
targets, and the table bin/benchmark prints. Calls data/, training/ and serving/, never cli/."""
