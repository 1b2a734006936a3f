"""Compiled artifacts on disk: export, integrity checks and loading.

Runtime side: imports only numpy, ``tvm_ffi`` and ``tvm.runtime``. An artifact is a
directory::

    plan.json       the execution plan (ios_tvm/ir/plan.py), with the sha256 of its kernels.so
    kernels.so      the kernel library (TVM runtime module)
    params.bin      the weights (tvm.runtime.save_param_dict format)
    manifest.json   format, version, target, device type, size and sha256 of each file

Loading an artifact runs its code (kernels.so is a shared library), like loading any shared
library: load artifacts you trust. The loader checks everything it can before that: the
manifest names only these files, each has the size and sha256 it records, kernels.so is a
complete ELF file and the one the plan was built with, and the plan passes
:meth:`~ios_tvm.ir.plan.Plan.validate`; its kernels must be the library's own functions or
global functions allowed by :func:`allow_packed_function`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import secrets
import signal
import struct
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ios_tvm.errors import CudaUnavailableError, PlanFormatError, Terminated
from ios_tvm.ir.plan import Plan, parse_json, target_dict
from ios_tvm.runtime.cuda import cubin_runs_on, cuda_device_problem, load_cuda_runtime
from ios_tvm.runtime.executor import Executor, packed_function_allowed

ARTIFACT_FORMAT = "ios_tvm.Artifact"
#: Version 2 records each file's sha256 next to its size.
ARTIFACT_VERSION = 2
_FILES = ("plan.json", "kernels.so", "params.bin")


#: manifest.json and plan.json larger than this are not read (real ones take kilobytes).
_MAX_JSON_FILE_BYTES = 1 << 28


def _subset(want: Any, have: Any) -> bool:
    if isinstance(want, Mapping):
        return isinstance(have, Mapping) and all(
            k in have and _subset(v, have[k]) for k, v in want.items())
    return bool(want == have)


def target_matches(built: str, expected: str | Mapping[str, Any] | Any) -> bool:
    """Whether an artifact built for ``built`` (the plan's target, JSON text) is for ``expected``.

    ``expected`` is a kind name (``"llvm"``, ``"cuda"``), a target dict or its JSON text, or a
    ``tvm.target.Target``; every key it gives must match (e.g. ``{"kind": "cuda", "arch":
    "sm_90"}``). Works without the TVM compiler.
    """
    have, want = target_dict(built), target_dict(expected)
    if have is None or want is None:
        return str(built).strip() == str(expected).strip()
    return _subset(want, have)


# -- artifacts ---------------------------------------------------------------------------------
def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


@contextlib.contextmanager
def _directory_lock(directory: Path, exclusive: bool) -> Iterator[None]:
    """An advisory lock on an artifact directory (a no-op where flock is missing).

    Exporters hold it exclusively while they rename their files into place, loaders shared
    while they check and read them, so a load never sees half of one export and half of
    another.
    """
    try:
        import fcntl
    except ImportError:  # not POSIX
        yield
        return
    fd = os.open(directory, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        except OSError:  # a file system without locks (some NFS): go on unlocked
            pass
        yield
    finally:
        os.close(fd)  # releases the lock


@contextlib.contextmanager
def _cleanup_on_sigterm() -> Iterator[None]:
    """Make SIGTERM raise inside the block, then end the process by it as it would have ended.

    So the block's ``finally`` clauses remove its temporary files. Only in the main thread
    and while SIGTERM has its default action (an application that handles SIGTERM itself
    keeps its handler).
    """
    if threading.current_thread() is not threading.main_thread() or \
            signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        yield
        return
    received = False

    def handler(signum: int, frame: Any) -> None:
        nonlocal received
        received = True
        raise Terminated(signum)

    signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        if received:
            os.kill(os.getpid(), signal.SIGTERM)


@dataclass
class Artifact:
    """A compiled model: plan, kernel library and weights."""

    plan: Plan
    lib: Any
    params: dict[str, Any]

    def export(self, directory: str | os.PathLike[str]) -> Path:
        """Write the artifact to ``directory`` (created; an artifact there is replaced).

        The files are written under unique temporary names in ``directory`` and renamed into
        place under a lock on it, manifest last, so concurrent exports to one directory leave
        one of them whole. Temporary files are removed on any failure, also on SIGTERM.
        """
        import tvm.runtime as rt
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        tmp: dict[str, Path] = {}

        def temp(name: str, suffix: str = ".tmp") -> Path:
            # Unique per process and call (not mkstemp: its files are private, mode 0600).
            tmp[name] = out / f".{name}.{os.getpid()}.{secrets.token_hex(6)}{suffix}"
            return tmp[name]

        with _cleanup_on_sigterm():
            try:
                # export_library picks the toolchain from the suffix.
                self.lib.export_library(str(temp("kernels.so", ".tmp.so")))
                doc = self.plan.to_json()
                doc["kernels_sha256"] = _sha256(tmp["kernels.so"])  # ties plan and library
                temp("plan.json").write_text(json.dumps(doc, indent=1))
                rt.save_param_dict_to_file(
                    {k: v if isinstance(v, rt.Tensor) else rt.tensor(np.asarray(v))
                     for k, v in self.params.items()}, str(temp("params.bin")))
                manifest = {"format": ARTIFACT_FORMAT, "version": ARTIFACT_VERSION,
                            "target": self.plan.target, "device_type": self.plan.device_type,
                            "files": {n: {"size": tmp[n].stat().st_size,
                                          "sha256": _sha256(tmp[n])} for n in _FILES}}
                temp("manifest.json").write_text(json.dumps(manifest, indent=1))
                with _directory_lock(out, exclusive=True):
                    for name in (*_FILES, "manifest.json"):
                        tmp.pop(name).replace(out / name)
            finally:
                for path in tmp.values():
                    path.unlink(missing_ok=True)
        return out

    def executor(self, device: Any | None = None, *,
                 cuda_graph: bool | None = None) -> Executor:
        """An :class:`Executor` for this artifact (``cuda_graph``: see :class:`Executor`)."""
        return Executor(self.plan, self.lib, self.params, device, cuda_graph=cuda_graph)


def load(directory: str | os.PathLike[str], device: Any | None = None, *,
         expect_target: str | Mapping[str, Any] | None = None,
         cuda_graph: bool | None = None) -> Executor:
    """Load an artifact directory written by :meth:`Artifact.export` and return its executor.

    Raises :class:`~ios_tvm.errors.PlanFormatError` naming the file at fault when the artifact
    is incomplete, truncated, altered, of another version, or for another target/device.
    ``expect_target`` is checked with :func:`target_matches`; ``cuda_graph`` as in
    :class:`Executor` (default: on for CUDA artifacts). Loading runs the artifact's code
    (see the module docstring).

    A CUDA artifact holds compiled kernels (cubin), so it loads with the TVM runtime alone
    (``TVM_USE_RUNTIME_LIB=1``), without NVRTC or a compiler; TVM's CUDA runtime library is
    loaded here when needed (:func:`ios_tvm.runtime.cuda.load_cuda_runtime`). Without a
    usable CUDA device, driver or runtime it raises
    :class:`~ios_tvm.errors.CudaUnavailableError`, one line saying which.
    """
    try:
        art = load_artifact(directory, expect_target=expect_target)
    except PlanFormatError as e:  # a sound artifact, but no CUDA runtime to load it here
        if isinstance(e.__cause__, CudaUnavailableError):
            raise CudaUnavailableError(f"{directory}: cannot run this CUDA artifact: "
                                       f"{e.__cause__}") from e
        raise
    on_cuda = device is None or device.dlpack_device_type() % 128 == 2  # kDLCUDA (RPC: +128k)
    if art.plan.device_type == "cuda" and on_cuda:
        index = 0 if device is None else int(device.index)
        problem = cuda_device_problem(index)  # the first CUDA call
        if problem:
            raise CudaUnavailableError(f"{directory}: cannot run this CUDA artifact: {problem}")
        arch = (target_dict(art.plan.target) or {}).get("arch")
        if isinstance(arch, str):  # a cubin for another GPU fails at its first kernel launch
            import tvm

            version = str(tvm.cuda(index).compute_version)
            if not cubin_runs_on(arch, version):
                raise PlanFormatError(f"{directory}: its kernels are compiled for {arch}; CUDA "
                                      f"device {index} has compute capability {version} "
                                      f"(rebuild with target {{\"kind\": \"cuda\", \"arch\": "
                                      f"\"sm_{version.replace('.', '')}\"}})")
    return art.executor(device, cuda_graph=cuda_graph)


def _read_manifest(root: Path) -> dict[str, Any]:
    """manifest.json, checked.

    Format, version, and exactly the artifact's files, each with its size and sha256.
    """
    path = root / "manifest.json"
    if not path.is_file():
        raise PlanFormatError(f"{root}: not an ios-tvm artifact (no manifest.json)")
    if path.stat().st_size > _MAX_JSON_FILE_BYTES:
        raise PlanFormatError(f"{path}: corrupt manifest ({path.stat().st_size} bytes)")
    try:
        manifest = parse_json(path.read_bytes(), "the manifest")
    except PlanFormatError as e:
        raise PlanFormatError(f"{path}: corrupt manifest: {e}") from e
    if not isinstance(manifest, dict) or manifest.get("format") != ARTIFACT_FORMAT:
        raise PlanFormatError(f"{path}: not an {ARTIFACT_FORMAT} manifest")
    version = manifest.get("version")
    if version != ARTIFACT_VERSION or isinstance(version, bool):
        raise PlanFormatError(f"{path}: artifact version {version!r}, this ios-tvm reads "
                              f"version {ARTIFACT_VERSION}; rebuild it")
    files = manifest.get("files")

    def entry_ok(e: Any) -> bool:
        return isinstance(e, dict) and set(e) == {"size", "sha256"} and \
            type(e["size"]) is int and e["size"] >= 0 and isinstance(e["sha256"], str) and \
            len(e["sha256"]) == 64 and all(c in "0123456789abcdef" for c in e["sha256"])

    if not isinstance(files, dict) or set(files) != set(_FILES) or \
            not all(entry_ok(e) for e in files.values()):
        raise PlanFormatError(f"{path}: corrupt manifest (it must list exactly "
                              f"{', '.join(_FILES)}, each with its size and sha256)")
    for key in ("target", "device_type"):
        if not isinstance(manifest.get(key), str):
            raise PlanFormatError(f"{path}: corrupt manifest (no {key!r})")
    return manifest


def _check_files(root: Path, files: Mapping[str, Mapping[str, Any]]) -> dict[str, str]:
    """Each file exists with the size and sha256 the manifest records; returns the hashes."""
    hashes = {}
    for name in _FILES:
        path = root / name
        if not path.is_file():
            raise PlanFormatError(f"{path}: missing from the artifact")
        size = path.stat().st_size
        if size != files[name]["size"]:
            raise PlanFormatError(f"{path}: {size} bytes, the manifest says "
                                  f"{files[name]['size']} (truncated or replaced)")
        if name == "plan.json" and size > _MAX_JSON_FILE_BYTES:
            raise PlanFormatError(f"{path}: {size} bytes, too large for a plan")
        hashes[name] = _sha256(path)
        if hashes[name] != files[name]["sha256"]:
            raise PlanFormatError(f"{path}: its sha256 differs from the manifest's (corrupt or "
                                  "replaced)")
    return hashes


#: ELF program header types whose file bytes the dynamic loader maps or reads.
_ELF_LOADED = {1, 2, 3, 4, 7}  # PT_LOAD, PT_DYNAMIC, PT_INTERP, PT_NOTE, PT_TLS
#: Smallest program / section header entry of 32- and 64-bit ELF files.
_ELF_ENTRY_BYTES = {("program", False): 32, ("program", True): 56, ("section", False): 40,
                    ("section", True): 64}


def check_shared_library(path: Path) -> None:
    """Raise :class:`PlanFormatError` unless ``path`` is a complete ELF shared library.

    A shared library cut short maps pages past the end of its file: loading it dies of
    SIGBUS instead of failing. So the ELF header, the program and section header tables and
    every segment and section must lie inside the file.
    """
    size = path.stat().st_size
    with open(path, "rb") as f:
        ident = f.read(64)
        if len(ident) < 16 or ident[:4] != b"\x7fELF" or ident[4] not in (1, 2) or \
                ident[5] not in (1, 2) or len(ident) < (64 if ident[4] == 2 else 52):
            raise PlanFormatError(f"{path}: cannot load the kernel library: not an ELF file")
        is64, order = ident[4] == 2, "<" if ident[5] == 1 else ">"
        header = f"{order}HHIQQQIHHHHHH" if is64 else f"{order}HHIIIIIHHHHHH"
        (e_type, _, _, _, phoff, shoff, _, _, phentsize, phnum, shentsize, shnum,
         _) = struct.unpack_from(header, ident, 16)
        if e_type != 3:  # ET_DYN
            raise PlanFormatError(f"{path}: cannot load the kernel library: not a shared "
                                  f"library (ELF type {e_type})")

        def table(offset: int, entsize: int, count: int, what: str) -> list[bytes]:
            if count and (entsize < _ELF_ENTRY_BYTES[what, is64] or
                          offset + entsize * count > size):
                raise PlanFormatError(f"{path}: cannot load the kernel library: its {what} "
                                      f"header table lies outside the file (truncated?)")
            f.seek(offset)
            data = f.read(entsize * count)
            return [data[i * entsize:(i + 1) * entsize] for i in range(count)]

        for ph in table(phoff, phentsize, phnum, "program"):
            if is64:
                p_type, _, p_offset, _, _, p_filesz = struct.unpack_from(f"{order}IIQQQQ", ph)
            else:
                p_type, p_offset, _, _, p_filesz = struct.unpack_from(f"{order}IIIII", ph)
            if p_type in _ELF_LOADED and p_offset + p_filesz > size:
                raise PlanFormatError(f"{path}: cannot load the kernel library: a segment ends "
                                      f"at byte {p_offset + p_filesz} of a {size}-byte file "
                                      "(truncated?)")
        for sh in table(shoff, shentsize, shnum, "section"):
            if is64:
                _, sh_type, _, _, sh_offset, sh_size = struct.unpack_from(f"{order}IIQQQQ", sh)
            else:
                _, sh_type, _, _, sh_offset, sh_size = struct.unpack_from(f"{order}IIIIII", sh)
            if sh_type != 8 and sh_offset + sh_size > size:  # 8: SHT_NOBITS (.bss)
                raise PlanFormatError(f"{path}: cannot load the kernel library: a section ends "
                                      f"at byte {sh_offset + sh_size} of a {size}-byte file "
                                      "(truncated?)")


_PARAMS_MAGIC, _TENSOR_MAGIC = 0xF7E58D4F05049CB7, 0xDD5E40F096B4A13F


def check_param_file(path: Path) -> None:
    """Raise :class:`PlanFormatError` unless ``path`` is a whole TVM parameter file.

    TVM's reader fills the rest of a tensor cut short with whatever memory held, without an
    error; so the layout (``tvm.runtime.save_param_dict``: magic, names, then per tensor its
    magic, device, ndim, dtype, shape, byte count and bytes) must account for every byte.
    """
    data = path.read_bytes()
    pos = 0

    def take(fmt: str) -> tuple[Any, ...]:
        nonlocal pos
        size = struct.calcsize(fmt)
        if pos + size > len(data):
            raise PlanFormatError(f"{path}: cannot read the weights: the file ends at byte "
                                  f"{len(data)}, inside a header (truncated?)")
        pos += size
        return struct.unpack_from(fmt, data, pos - size)

    def fail(why: str) -> PlanFormatError:
        return PlanFormatError(f"{path}: cannot read the weights: {why}")

    if take("<QQ")[0] != _PARAMS_MAGIC:
        raise fail("not a TVM parameter file")
    (count,) = take("<Q")
    if count > len(data) // 8:
        raise fail(f"{count} names in a {len(data)}-byte file")
    for _ in range(count):
        (n,) = take("<Q")
        if pos + n > len(data):
            raise fail("a name runs past the end of the file (truncated?)")
        pos += n
    if take("<Q")[0] != count:
        raise fail("as many tensors as names expected")
    for i in range(count):
        magic, _, _, _, ndim, _, bits, lanes = take("<QQiiiBBH")
        if magic != _TENSOR_MAGIC or not 0 <= ndim <= 32:
            raise fail(f"tensor {i} has a corrupt header")
        shape = take(f"<{ndim}q")
        (nbytes,) = take("<q")
        want = (bits * lanes + 7) // 8
        for d in shape:
            want *= d
        if any(d < 0 for d in shape) or nbytes != want:
            raise fail(f"tensor {i} has {nbytes} bytes for shape {shape}")
        if pos + nbytes > len(data):
            raise fail(f"tensor {i} runs past the end of the file (truncated?)")
        pos += nbytes
    if pos != len(data):
        raise fail(f"{len(data) - pos} bytes after the last tensor")


def load_artifact(directory: str | os.PathLike[str], *,
                  expect_target: str | Mapping[str, Any] | None = None) -> Artifact:
    """Read an artifact directory (see :func:`load`) without creating an executor."""
    import tvm.runtime as rt
    root = Path(directory)
    with _directory_lock(root, exclusive=False) if root.is_dir() else contextlib.nullcontext():
        manifest = _read_manifest(root)
        hashes = _check_files(root, manifest["files"])
        plan_path = root / "plan.json"
        try:
            doc = parse_json(plan_path.read_bytes(), "plan", check_depth=False)
            plan = Plan.from_json(doc)   # (checks the depth)
        except PlanFormatError as e:
            raise PlanFormatError(f"{plan_path}: {e}") from e
        if plan.device_type != manifest["device_type"] or plan.target != manifest["target"]:
            raise PlanFormatError(f"{plan_path}: the plan is for {plan.device_type} target "
                                  f"{plan.target}, the manifest says {manifest['device_type']} "
                                  f"target {manifest['target']}")
        if expect_target is not None and not target_matches(plan.target, expect_target):
            raise PlanFormatError(f"{plan_path}: built for target {plan.target}, not "
                                  f"{expect_target}")
        lib_path = root / "kernels.so"
        if doc.get("kernels_sha256") != hashes["kernels.so"]:
            raise PlanFormatError(f"{lib_path}: not the kernel library this plan was built "
                                  "with (its sha256 differs from the plan's kernels_sha256)")
        check_shared_library(lib_path)
        no_cuda: CudaUnavailableError | None = None
        if plan.device_type == "cuda":
            try:
                load_cuda_runtime()
            except CudaUnavailableError as e:  # matters only if the library has CUDA kernels
                no_cuda = e
        try:
            lib = rt.load_module(str(lib_path))
        except Exception as e:  # TVM raises RuntimeError/TVMError variants
            if no_cuda is not None and "cuda" in str(e):  # (load turns it into no_cuda)
                raise PlanFormatError(f"{lib_path}: cannot load the kernel library here: its "
                                      f"CUDA kernels need TVM's CUDA runtime: {no_cuda}") \
                    from no_cuda
            hint = ""
            if plan.device_type == "cuda" and ("TargetCurrent" in str(e) or "NVRTC" in str(e)):
                hint = (" (its CUDA kernels are CUDA source, compiled when loaded: an artifact "
                        "from an older ios-tvm; rebuild it, current ones hold compiled kernels)")
            raise PlanFormatError(f"{lib_path}: cannot load the kernel library: {e}{hint}") \
                from e
        has_cuda = any(m.kind == "cuda" for m in lib.imports)
        if has_cuda != (plan.device_type == "cuda"):  # CPU code on device pointers, or back
            raise PlanFormatError(f"{lib_path}: the library {'has' if has_cuda else 'lacks'} "
                                  f"CUDA kernels, but the plan runs on {plan.device_type!r}")
        missing = sorted({c.kernel for c in plan.calls if not _callable(lib, c.kernel)})
        if missing:
            raise PlanFormatError(f"{lib_path}: kernel(s) {missing[:3]} named by the plan are "
                                  "missing (neither in the library nor global functions allowed "
                                  "with ios_tvm.runtime.executor.allow_packed_function)")
        check_param_file(root / "params.bin")
        try:
            params = dict(rt.load_param_dict_from_file(str(root / "params.bin")))
        except Exception as e:
            raise PlanFormatError(f"{root / 'params.bin'}: cannot read the weights: {e}") from e
    return Artifact(plan, lib, params)


def _callable(lib: Any, kernel: str) -> bool:
    """Whether a plan may call ``kernel``, as the executor decides.

    A function of ``lib`` (or its imports), or an allowed global function (library dispatch).
    """
    import tvm_ffi

    if lib.implements_function(kernel, True):
        return True
    return packed_function_allowed(kernel) and \
        tvm_ffi.get_global_func(kernel, allow_missing=True) is not None
