"""Benchmarks: every way ios-tvm and its peers run a model, timed side by side.

``harness`` (:func:`~ios_tvm.bench.harness.bench`, the report), ``timing`` (round-robin timing,
machine facts), ``baselines`` (ONNX Runtime, PyTorch), ``torch_onnx`` (an ONNX graph run op by
op with PyTorch), ``plot`` (timelines, graphs, speed-up charts).
"""
