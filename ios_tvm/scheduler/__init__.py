"""The IOS schedule search over a kernel graph (no TVM).

``config`` (every knob), ``search`` (the dynamic program, the baselines), ``native`` (the DP
of one part in C++), ``partition`` and ``units`` (large graphs in parts, chains as units),
``merge`` (which ops IOS-Merge may merge), ``stage_cost`` (the cost interface the search
calls) and ``bits``.
"""
