"""Byzantine-robust aggregation rules, one file each, chosen by `aggregator.rule` (docs/robustness.md).

Each is a plug-in holding the "aggregator" role: it gets every upload of the round at once. The
registry (fedplug/algorithms/registry.py, RULES) imports a rule's file only when the config names it;
with `aggregator.rule none` nothing here is imported and the server keeps its streaming mean.
"""
