"""Loading and running artifacts; imports only ``tvm.runtime`` and ``tvm_ffi`` from TVM.

``executor`` (the native stage executor behind a Python class) and ``artifact`` (an artifact
directory: export, integrity checks, load). A GPU host with TVM in runtime-only mode
(``TVM_USE_RUNTIME_LIB=1``) runs artifacts compiled elsewhere.
"""
