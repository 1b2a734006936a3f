"""The data that flows between the stages: the kernel graph, schedules and execution plans.

No TVM here: the scheduler and the runtime both read these types.
"""
