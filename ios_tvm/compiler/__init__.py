"""TVM's side of ios-tvm: from a model to a runnable artifact.

In data-flow order: ``target`` (targets and devices), ``frontend`` and ``model_checks``
(loading ONNX / ``nn.Module`` / Relax and refusing what cannot run), ``layout`` (CPU conv
layout), ``index_guard`` (bounds checks of gather/scatter indices), ``kernels`` (TVM's lowering
to fused kernels), ``kernel_schedules`` and ``tune``/``tuning_db`` (CPU schedules and
MetaSchedule tuning), ``extract`` (the kernel graph), ``inputs`` and ``profiling`` (what the
measured cost model is handed), ``merge`` (IOS-Merge kernels), ``library``, ``memory`` and
``plan_lowering`` (schedule -> plan -> artifact), ``relax_vm`` (the baseline), ``choose`` (the
never-slower decision), ``transform`` (the Relax pass and pipeline) and ``build``.
"""
