"""The pruning engine: torch and torch-pruning only, never Lightning.

One concept per module: ``pruner`` (the dependency graph pruned to absolute ratios), ``surgery``
(parameters and optimizer state), ``schedules``, ``criteria``, ``budget``, ``safety``, ``attention``,
``rollback``, ``report``, ``latency``, ``inputs``, ``spec`` (the callback's parameters) and ``compat``
(every use of torch-pruning's internals).
"""
