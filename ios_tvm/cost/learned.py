"""The learned stage-cost model (``cost="learned"``): XGBoost predicts what is not measured.

A measured search times every stage the DP can ask for (Inception V3: ~700 on this CPU). The
learned model times far fewer and predicts the rest:

* **Features** of a concurrent stage come from what is cheap to know: each member kernel's
  measured single-kernel latency (its one-op stage), its FLOPs, bytes and kind (conv,
  matmul, pool, data movement, elementwise), the number of groups and their sizes, the sum
  and the largest group sums of latencies, and the device's core (SM) count
  (:data:`FEATURES`). The target is ``log(stage latency / sum of its kernels' latencies)``:
  what running them together gains or loses, which transfers across models far better than
  absolute seconds.
* **Training data** is the measurement cache: every stage measured so far in this context
  (device, target, TVM version, settings) and in the contexts that differ from it only in
  whether weights were evicted (:func:`sibling_contexts`), of every model, whose kernels'
  features are known (kept beside the cache in ``<cache>.kernels.json``, since the cache
  stores kernel hashes).
* **Uncertainty** is the spread of an ensemble of boosters trained on bootstrap resamples
  with different seeds (std of the predicted log ratio).
* **Active learning**: all one-kernel stages are measured (they are the features); with too
  little training data a spread-out seed set is measured; then a few rounds measure the
  candidates whose spread, weighted by their latency, is largest, retraining after each.
* **Plan verification**: the DP is run on measured values where known and optimistic
  predictions (``mean - optimism * spread`` in log space) elsewhere, so its total is a lower
  bound if the model is right within its spread; every stage of the plan it picks that is
  not measured yet is measured, the model retrained, and the DP run again, until the plan
  is all measured or its measured total is within ``tolerance`` of the bound (or
  ``patience`` rounds found no better plan, or ``plan_rounds`` runs out). Optimism makes
  the DP try the stages the model is unsure of instead of trusting a pessimistic guess.
  The search proper then prices unmeasured stages pessimistically (``mean + optimism *
  spread``), so it keeps to measured stages unless a prediction is clearly better.
* **Budget** (:attr:`LearnedSettings.budget`, opt-in): at most that many stages are measured.
  The kernels are then not all measured first: a :class:`KernelModel` (XGBoost on a
  kernel's FLOPs, bytes and kind, trained on the one-kernel stages of the cache's other
  models) prices those not measured, and the budget goes to plan verification, the plan's
  stages of largest latency-weighted spread first. On five zoo models (CPU) that measured
  10-40x fewer stages than the pruned measured search for plans within 3% of its plans
  (``scripts/bench_learned.py``).
* **Fallback**: without xgboost (``pip install ios-tvm[learned]``) every stage is measured,
  as the measured model does, with one warning.

The trained ensemble is saved next to the cache (``<cache>.learned.json``) with its format
version, feature schema, measurement context (device) and the identity of the cache rows it
was trained on; :func:`load_learned_model` refuses a file that does not match with a
:class:`~ios_tvm.errors.LearnedModelError` naming it.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import math
import os
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from ios_tvm.cost.cache import MeasurementCache
from ios_tvm.cost.measured import MeasuredCost
from ios_tvm.errors import ConfigError, LearnedModelError
from ios_tvm.ir.graph import OpGraph, OpNode
from ios_tvm.ir.schedule import Stage
from ios_tvm.scheduler.config import SearchConfig
from ios_tvm.scheduler.search import candidate_stages, search

logger = logging.getLogger(__name__)

MODEL_FORMAT = "ios_tvm.LearnedCostModel"
#: Bump when the meaning of a saved model changes; older files are refused.
MODEL_VERSION = 1
#: Kernel kinds, by the op a kernel is anchored on (see :func:`kernel_kind`).
KINDS = ("conv", "matmul", "pool", "data", "elementwise")
#: The feature vector of a stage, in order (see :func:`stage_features`).
FEATURES: tuple[str, ...] = (
    "groups", "ops", "max_group_ops", "log_sum_s", "log_max_group_s", "max_group_frac",
    "second_group_frac", "min_group_frac", "log_max_op_s", "log_min_op_s", "log_flops",
    "log_bytes", "log_flops_per_s", "max_group_flops_frac", "cores", "groups_per_core",
    *(f"latency_frac_{k}" for k in KINDS))
#: Identifies :data:`FEATURES` (names and order) in a saved model.
FEATURE_SCHEMA = hashlib.sha1(",".join(FEATURES).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class KernelInfo:
    """What the features need of one kernel besides its latency."""

    flops: float
    nbytes: float
    kind: str


def kernel_kind(node: OpNode) -> str:
    """The kind (one of :data:`KINDS`) of a node, from its anchor op or its kernel name."""
    name = str(node.attrs.get("op") or node.kernel or node.name).lower()
    if "conv" in name:
        return "conv"
    if "matmul" in name or "dense" in name or "gemm" in name:
        return "matmul"
    if "pool" in name:
        return "pool"
    if any(w in name for w in ("concat", "copy", "reshape", "transpose", "split", "pad",
                               "layout", "take", "gather")):
        return "data"
    return "elementwise"


def kernel_infos(graph: OpGraph) -> list[KernelInfo]:
    """One :class:`KernelInfo` per node of ``graph``."""
    return [KernelInfo(float(n.flops), float(n.nbytes), kernel_kind(n)) for n in graph.nodes]


def stage_features(groups: Sequence[Sequence[tuple[float, KernelInfo]]],
                   cores: int) -> list[float]:
    """The :data:`FEATURES` of a stage given as groups of (kernel latency s, kernel info)."""
    lats = [lat for g in groups for lat, _ in g]
    total = sum(lats)
    group_s = sorted((sum(lat for lat, _ in g) for g in groups), reverse=True)
    flops = sum(k.flops for g in groups for _, k in g)
    nbytes = sum(k.nbytes for g in groups for _, k in g)
    group_flops = max(sum(k.flops for _, k in g) for g in groups)
    by_kind = dict.fromkeys(KINDS, 0.0)
    for g in groups:
        for lat, k in g:
            by_kind[k.kind if k.kind in by_kind else "elementwise"] += lat
    return [
        float(len(groups)), float(len(lats)), float(max(len(g) for g in groups)),
        math.log(total), math.log(group_s[0]), group_s[0] / total,
        (group_s[1] / total) if len(group_s) > 1 else 0.0, group_s[-1] / total,
        math.log(max(lats)), math.log(min(lats)), math.log1p(flops), math.log1p(nbytes),
        math.log1p(flops / total), (group_flops / flops) if flops > 0 else 0.0,
        float(cores), len(groups) / max(cores, 1),
        *(by_kind[k] / total for k in KINDS)]


#: The feature vector of one kernel for :class:`KernelModel` (see :func:`kernel_features`).
KERNEL_FEATURES: tuple[str, ...] = (
    "log_flops", "log_bytes", "log_flops_per_byte", "weights_cold", "cores",
    *(f"kind_{k}" for k in KINDS))


def kernel_features(info: KernelInfo, cores: int, cold: bool) -> list[float]:
    """The :data:`KERNEL_FEATURES` of a kernel, timed with weights evicted or not."""
    return [math.log1p(info.flops), math.log1p(info.nbytes),
            math.log1p(info.flops / max(info.nbytes, 1.0)), float(cold), float(cores),
            *(1.0 if info.kind == k else 0.0 for k in KINDS)]


def parse_stage_key(key: str) -> tuple[str, list[list[str]]]:
    """Strategy and groups of kernel keys of a measured stage key (see MeasuredCost)."""
    strategy, _, body = key.partition(":")
    return strategy, [g.split(",") for g in body.split("|")] if body else []


def xgboost_available() -> bool:
    """Whether xgboost imports (``pip install ios-tvm[learned]``)."""
    try:
        import xgboost  # noqa: F401
    except ImportError:
        return False
    return True


# -- kernel features beside the cache --------------------------------------------------------------
def kernels_file(cache: MeasurementCache) -> Path:
    """Where the kernel features of ``cache``'s stages are kept: ``<cache>.kernels.json``."""
    return cache.path.with_name(cache.path.name + ".kernels.json")


def model_id(keys: Sequence[str]) -> str:
    """Identifies a model (its kernel keys in order) in the kernel features file."""
    return hashlib.sha1(",".join(keys).encode()).hexdigest()[:12]


def _read_kernels_doc(cache: MeasurementCache | None) -> dict[str, Any]:
    empty: dict[str, Any] = {"kernels": {}, "models": {}}
    if cache is None:
        return empty
    path = kernels_file(cache)
    if not path.is_file():
        return empty
    try:
        doc = json.loads(path.read_text())
        if not isinstance(doc, dict) or not isinstance(doc.get("kernels"), dict):
            raise ValueError("no 'kernels' table")
        return {"kernels": doc["kernels"], "models": dict(doc.get("models") or {})}
    except (OSError, ValueError) as e:
        logger.warning("ignoring unreadable kernel features %s: %s", path, e)
        return empty


def read_kernel_features(cache: MeasurementCache | None) -> dict[str, KernelInfo]:
    """Kernel features by kernel key stored beside ``cache`` (empty if none)."""
    table: dict[str, KernelInfo] = {}
    for key, value in _read_kernels_doc(cache)["kernels"].items():
        try:
            flops, nbytes, kind = value
            table[key] = KernelInfo(float(flops), float(nbytes), str(kind))
        except (TypeError, ValueError):
            continue
    return table


def read_model_kernels(cache: MeasurementCache | None) -> dict[str, set[str]]:
    """The kernel keys of every model measured into ``cache``, by :func:`model_id`."""
    return {m: set(keys) for m, keys in _read_kernels_doc(cache)["models"].items()}


def record_kernel_features(cache: MeasurementCache | None, keys: Sequence[str],
                           graph: OpGraph) -> None:
    """Store the features of ``graph``'s kernels (keyed like its stages) beside ``cache``.

    The measurement cache names kernels by hashes; these features make its stages training
    data for the learned model, and the model's kernel list lets training hold out whole
    models. Called by every measured search, so all models measured so far teach the
    learned model.
    """
    if cache is None or cache.read_only:
        return
    doc = _read_kernels_doc(cache)
    mid = model_id(keys)
    new = {k: [v.flops, v.nbytes, v.kind] for k, v in zip(keys, kernel_infos(graph),
                                                             strict=True)}
    if mid in doc["models"] and all(doc["kernels"].get(k) == v for k, v in new.items()):
        return
    doc["kernels"].update(new)
    doc["models"][mid] = sorted(set(keys))
    path = kernels_file(cache)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    try:
        tmp.write_text(json.dumps(doc, sort_keys=True))
        tmp.replace(path)
    except OSError as e:
        logger.warning("cannot save kernel features to %s: %s", path, e)


# -- the ensemble ---------------------------------------------------------------------------------
class Ensemble:
    """Boosters trained on bootstrap resamples; their spread is the uncertainty.

    Parameters
    ----------
    size
        Number of boosters.
    rounds, depth, eta, l2
        Boosting rounds, tree depth, learning rate and L2 penalty of each booster. Small,
        shallow and strongly penalised: stage timings on a shared machine are noisy, and
        leave-one-model-out on the zoo (CPU) preferred this to deeper, longer boosting.
    loss
        ``"huber"`` (pseudo-Huber, robust to a timing taken while the machine was busy) or
        ``"squared"``.
    center
        Train on the targets minus their median (what absolute log latencies need, as
        boosting starts from zero); off, a shrunk model stays near zero (for log ratios: near
        the kernels' sum).
    """

    def __init__(self, size: int = 5, rounds: int = 30, depth: int = 2, eta: float = 0.1,
                 l2: float = 50.0, loss: str = "huber", center: bool = False) -> None:
        if loss not in ("huber", "squared"):
            raise ConfigError(f"Ensemble loss must be 'huber' or 'squared', not {loss!r}")
        self.size, self.rounds, self.depth, self.eta, self.l2 = size, rounds, depth, eta, l2
        self.loss, self.center = loss, center
        self.boosters: list[Any] = []
        #: Subtracted from the targets before training (added back by :meth:`predict`):
        #: boosting starts from zero, and absolute log latencies are far from it.
        self.offset = 0.0

    def fit(self, x: Sequence[Sequence[float]], y: Sequence[float], seed: int = 0) -> None:
        """Train on rows ``x`` (feature vectors) and targets ``y``."""
        import numpy as np
        import xgboost as xgb

        xa, ya = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
        self.offset = float(np.median(ya)) if self.center and len(ya) else 0.0
        ya = ya - self.offset
        rng = np.random.default_rng(seed)
        # Pseudo-Huber loss: a stage timed while the machine was busy (a 2x outlier) must not
        # pull the model the way a squared loss lets it.
        loss = ({"objective": "reg:pseudohubererror", "huber_slope": 0.1}
                if self.loss == "huber" else {"objective": "reg:squarederror"})
        params = {"max_depth": self.depth, "eta": self.eta, "subsample": 0.9,
                  "colsample_bytree": 0.8, "min_child_weight": 2.0, "lambda": self.l2,
                  **loss, "nthread": 1, "verbosity": 0}
        self.boosters = []
        # One matrix (one thread: the sizes are tiny and the machine is shared); a bootstrap
        # resample is a weight per row (how often it was drawn).
        dm = xgb.DMatrix(xa, label=ya, nthread=1)
        for k in range(self.size):
            # The first booster sees every row once, so the mean stays sharp.
            w = (np.ones(len(ya)) if k == 0
                 else np.bincount(rng.integers(0, len(ya), len(ya)), minlength=len(ya)))
            dm.set_weight(w.astype(np.float64))
            self.boosters.append(xgb.train({**params, "seed": seed + k}, dm,
                                           num_boost_round=self.rounds))

    def predict(self, x: Sequence[Sequence[float]]) -> tuple[list[float], list[float]]:
        """Mean and spread (standard deviation) of the boosters' predictions per row."""
        import numpy as np
        import xgboost as xgb

        if not self.boosters:
            raise LearnedModelError("the learned cost model is not trained")
        dm = xgb.DMatrix(np.asarray(x, dtype=np.float64), nthread=1)
        preds = np.stack([b.predict(dm) for b in self.boosters]) + self.offset
        return preds.mean(axis=0).tolist(), preds.std(axis=0).tolist()

    def to_json(self) -> list[str]:
        """The boosters, each as base64 of XGBoost's (binary JSON) model."""
        return [base64.b64encode(bytes(b.save_raw("ubj"))).decode() for b in self.boosters]

    @classmethod
    def from_json(cls, data: Sequence[str], offset: float = 0.0) -> Ensemble:
        """Inverse of :meth:`to_json` (``offset``: :attr:`offset` of the saved ensemble)."""
        import xgboost as xgb

        ens = cls(size=len(data))
        ens.offset = float(offset)
        for raw in data:
            booster = xgb.Booster()
            booster.load_model(bytearray(base64.b64decode(raw)))
            ens.boosters.append(booster)
        return ens


#: Booster settings the training chooses from by leave-one-model-out error: shallow and
#: strongly penalised (close to the kernels' sum unless the data insist; what noisy timings
#: on a shared CPU need), or deeper and freer (what clean, structured timings reward).
CONFIGS: dict[str, dict[str, Any]] = {
    "prior": {"rounds": 30, "depth": 2, "l2": 50.0},
    "flexible": {"rounds": 120, "depth": 4, "l2": 1.0},
}


#: The kernel-latency model's choices (:class:`KernelModel`): absolute log latencies vary
#: over orders of magnitude, so both are free; leave-one-model-out on six zoo models (CPU)
#: put either at 20-35% median error, each winning on some models.
KERNEL_CONFIGS: dict[str, dict[str, Any]] = {
    "flexible": {"rounds": 120, "depth": 4, "l2": 1.0, "center": True},
    "squared": {"rounds": 200, "depth": 3, "l2": 1.0, "loss": "squared", "center": True},
}


def fit_ensemble(x: Sequence[Sequence[float]], y: Sequence[float],
                 groups: Sequence[str] | None = None, *, size: int = 5, seed: int = 0,
                 min_group: int = 5, configs: Mapping[str, Mapping[str, Any]] | None = None
                 ) -> tuple[Ensemble, str, dict[str, float]]:
    """An ensemble of the ``configs`` entry with the lowest leave-one-model-out error.

    ``configs`` defaults to :data:`CONFIGS`.
    ``groups`` names the model of each row; with fewer than two models of ``min_group``
    rows, four folds of the rows are held out instead (``"prior"`` with too few rows for
    that). The error of a config is the
    mean over held-out models of the median relative error of the predicted latency.
    Returns the ensemble, the config's name and each config's error.
    """
    import numpy as np

    configs = CONFIGS if configs is None else configs
    errors: dict[str, float] = {}
    names = [g for g in sorted(set(groups or ())) if g != "?"
             and sum(1 for h in groups or () if h == g) >= min_group]
    ga = np.asarray(groups) if groups is not None else None
    if len(names) < 2 and len(y) >= 4 * min_group:
        # One model only (a cold cache): hold out folds of its rows instead.
        ga = np.asarray([f"fold{i % 4}" for i in range(len(y))])
        names = sorted(set(ga.tolist()))
    if ga is not None and len(names) >= 2:
        xa, ya = np.asarray(x), np.asarray(y)
        for name, cfg in configs.items():
            per_model = []
            for held in names:
                train, test = ga != held, ga == held
                ens = Ensemble(size=1, **cfg)
                ens.fit(xa[train], ya[train], seed=seed)
                mean, _ = ens.predict(xa[test])
                per_model.append(float(np.median(np.abs(np.exp(np.asarray(mean) - ya[test])
                                                        - 1.0))))
            errors[name] = float(np.mean(per_model))
    best = min(errors, key=errors.__getitem__) if errors else next(iter(configs))
    ens = Ensemble(size=size, **configs[best])
    ens.fit(x, y, seed=seed)
    return ens, best, errors


# -- the model file -------------------------------------------------------------------------------
def cache_rows(cache: MeasurementCache | None, context: str,
               until: float | None = None) -> list[tuple[str, float, float]]:
    """(stage key, seconds, created) of ``context`` in ``cache``, those created by ``until``."""
    if cache is None:
        return []
    rows = cache.items(context)
    return [r for r in rows if until is None or r[2] <= until]


def sibling_contexts(cache: MeasurementCache | None, context: str) -> list[str]:
    """``context``, then the contexts of ``cache`` that differ from it only in ``"weights"``.

    The profiler times stages of large-weight models with their weights evicted
    (``"weights": "cold"``) and others warm; the measurements of both teach the models
    (a stage's gain over its kernels' sum transfers; kernel latencies carry a cold flag).
    """
    if cache is None:
        return [context]

    def strip(ctx: str) -> dict[str, Any] | None:
        try:
            doc = json.loads(ctx)
        except ValueError:
            return None
        if not isinstance(doc, dict):
            return None
        doc.pop("weights", None)
        return doc

    ours = strip(context)
    return [context, *(c for c in cache.contexts() if c != context and strip(c) == ours)]


def weights_cold(context: str) -> bool:
    """Whether ``context`` is one of stages timed with their weights evicted."""
    try:
        return json.loads(context).get("weights") == "cold"
    except (ValueError, AttributeError):
        return False


def training_rows(cache: MeasurementCache | None, context: str,
                  until: float | None = None) -> dict[str, list[tuple[str, float, float]]]:
    """:func:`cache_rows` of ``context`` and of each of its :func:`sibling_contexts`."""
    return {c: cache_rows(cache, c, until) for c in sibling_contexts(cache, context)}


def tagged_rows(cache: MeasurementCache | None, context: str,
                until: float | None = None) -> list[tuple[str, float, float]]:
    """Every row the models train on, in one list.

    A sibling context's keys are prefixed by a hash of it. :func:`rows_identity` of this
    identifies a saved model's training data.
    """
    out: list[tuple[str, float, float]] = []
    for ctx, rows in training_rows(cache, context, until).items():
        tag = "" if ctx == context else hashlib.sha1(ctx.encode()).hexdigest()[:8] + "/"
        out += [(tag + k, v, t) for k, v, t in rows]
    return out


def rows_identity(rows: Iterable[tuple[str, float, float]]) -> str:
    """A hash of stage keys and values: which measurements a model was trained on."""
    h = hashlib.sha1()
    for key, value, _ in sorted(rows):
        h.update(f"{key}={value!r};".encode())
    return h.hexdigest()[:20]


@dataclass
class KernelModel:
    """One kernel's latency (log seconds) from its FLOPs, bytes and kind.

    Trained on the one-kernel stages of every model in the cache (a leave-one-model-out
    choice among :data:`KERNEL_CONFIGS`), it stands in for the kernels a budgeted learned
    search (:attr:`LearnedSettings.budget`) has not measured. It is cheap to refit, so it is
    not saved.
    """

    ensemble: Ensemble
    config: str
    cv_error: dict[str, float]
    train_rows: int

    def predict(self, infos: Sequence[KernelInfo], cores: int, cold: bool
                ) -> tuple[list[float], list[float]]:
        """Latency (s) and spread (std of the log) of each kernel."""
        mean, spread = self.ensemble.predict([kernel_features(i, cores, cold) for i in infos])
        return [math.exp(mu) for mu in mean], spread


def fit_kernel_model(rows: Mapping[str, Mapping[str, float]], table: Mapping[str, KernelInfo],
                     models: Mapping[str, set[str]], cores: int, *, size: int = 5,
                     seed: int = 0, min_rows: int = 8) -> KernelModel | None:
    """A :class:`KernelModel` on the one-kernel stages of ``rows`` (by context).

    None with fewer than ``min_rows`` of them.
    """
    x: list[list[float]] = []
    y: list[float] = []
    origin: list[str] = []
    for ctx, by_key in rows.items():
        cold = weights_cold(ctx)
        for key, value in by_key.items():
            strategy, groups = parse_stage_key(key)
            if strategy != "concurrent" or len(groups) != 1 or len(groups[0]) != 1:
                continue
            kernel = groups[0][0]
            if kernel not in table:
                continue
            x.append(kernel_features(table[kernel], cores, cold))
            y.append(math.log(value))
            origin.append(next((m for m, ks in sorted(models.items()) if kernel in ks), "?"))
    if len(x) < min_rows:
        return None
    ens, config, errors = fit_ensemble(x, y, origin, size=size, seed=seed,
                                       configs=KERNEL_CONFIGS)
    return KernelModel(ens, config, errors, len(x))


@dataclass
class LearnedModel:
    """A trained ensemble and what it was trained on (see :func:`load_learned_model`)."""

    ensemble: Ensemble
    context: str
    cache_rows: int
    cache_hash: str
    trained_until: float
    train_rows: int
    #: Searches (graph and configuration, :attr:`LearnedCost.search_id`) whose plans were
    #: verified (as far as :class:`LearnedSettings` let them) with this model; a rerun of
    #: one of them on an unchanged cache measures nothing.
    verified: list[str] = field(default_factory=list)

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the model file (atomically: a reader never sees half a file)."""
        ctx = json.loads(self.context)
        doc = {"format": MODEL_FORMAT, "version": MODEL_VERSION, "schema": FEATURE_SCHEMA,
               "features": list(FEATURES), "context": self.context,
               "device": ctx.get("device"),
               "cache": {"rows": self.cache_rows, "hash": self.cache_hash,
                         "until": self.trained_until},
               "train_rows": self.train_rows, "verified": list(self.verified),
               "boosters": self.ensemble.to_json(), "offset": self.ensemble.offset}
        path = Path(path)
        tmp = path.with_name(path.name + f".tmp{os.getpid()}")
        tmp.write_text(json.dumps(doc))
        tmp.replace(path)


def load_learned_model(path: str | os.PathLike[str], *, context: str,
                       cache: MeasurementCache | None) -> LearnedModel:
    """Read a saved model, refusing one that does not fit.

    Raises :class:`~ios_tvm.errors.LearnedModelError` (naming ``path``) when the file is not
    a learned cost model, is of another format version or feature schema, was trained for
    another measurement context (device, target, TVM, settings), or on measurements that
    ``cache`` does not hold (another cache, or one cleared or changed since).
    """
    path = Path(path)
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise LearnedModelError(f"{path} is not a readable learned cost model: {e}") from e
    if not isinstance(doc, dict) or doc.get("format") != MODEL_FORMAT:
        raise LearnedModelError(f"{path} is not an ios-tvm learned cost model")
    if doc.get("version") != MODEL_VERSION:
        raise LearnedModelError(f"{path} is a learned cost model of format version "
                                f"{doc.get('version')!r}; this ios-tvm reads version "
                                f"{MODEL_VERSION} (delete the file to retrain)")
    if doc.get("schema") != FEATURE_SCHEMA or doc.get("features") != list(FEATURES):
        raise LearnedModelError(f"{path} was trained on another feature schema "
                                f"({doc.get('schema')!r}, this ios-tvm: {FEATURE_SCHEMA!r}); "
                                "delete the file to retrain")
    if doc.get("context") != context:
        theirs = json.loads(doc.get("context") or "{}")
        ours = json.loads(context)
        diff = sorted(k for k in set(theirs) | set(ours) if theirs.get(k) != ours.get(k))
        raise LearnedModelError(
            f"{path} was trained for another measurement context (differs in "
            f"{', '.join(diff)}: device {theirs.get('device')!r}, here {ours.get('device')!r})")
    info = doc.get("cache") or {}
    try:
        until, n, want = float(info["until"]), int(info["rows"]), str(info["hash"])
    except (KeyError, TypeError, ValueError) as e:
        raise LearnedModelError(f"{path} does not say which measurements it was trained on "
                                f"({e!r})") from e
    rows = tagged_rows(cache, context, until)
    if len(rows) != n or rows_identity(rows) != want:
        where = cache.path if cache is not None else "no cache"
        raise LearnedModelError(
            f"{path} was trained on {n} measurements that the measurement cache ({where}) "
            f"does not hold ({len(rows)} of that time there, hash differs): another cache, or "
            "one cleared or changed since; delete the model file to retrain")
    try:
        ensemble = Ensemble.from_json(doc["boosters"], float(doc.get("offset", 0.0)))
    except Exception as e:  # noqa: BLE001 (any failure to parse is the file's fault)
        raise LearnedModelError(f"{path}: its boosters cannot be loaded ({e})") from e
    return LearnedModel(ensemble, context, n, want, until, int(doc.get("train_rows", 0)),
                        [str(v) for v in doc.get("verified", [])])


# -- the cost model -------------------------------------------------------------------------------
@dataclass(frozen=True)
class LearnedSettings:
    """Knobs of :class:`LearnedCost` (defaults suit the zoo on a CPU).

    Attributes
    ----------
    ensemble
        Boosters in the ensemble.
    min_train
        Fewest multi-kernel training rows to trust the model; with fewer, ``seed_stages``
        spread-out candidates are measured first.
    seed_stages
        Candidates measured to start from when the cache has too little data.
    batch, uncertainty_rounds
        Each active-learning round measures the ``batch`` candidates with the largest
        latency-weighted spread above ``spread``; ``uncertainty_rounds`` rounds.
    spread
        Ensemble spread (std of the predicted log ratio) below which a prediction is trusted.
    optimism
        Unmeasured stages are priced ``exp(mean - optimism * spread)`` times their kernels'
        sum, so the DP tries uncertain stages (and they get measured) instead of avoiding them.
    plan_rounds
        Most DP runs of plan verification (each measures the picked plan's unmeasured stages).
    tolerance
        Plan verification stops when the picked plan, measured, is within this fraction of
        the DP's optimistic bound.
    patience
        ... or when this many rounds in a row measured no better plan than before.
    budget
        The most stages the search measures: below 1, a fraction of its distinct candidate
        stages (one-kernel stages included); 1 or more, a number of stages; None (default),
        no limit. With a budget, kernels are not all measured first: those not measured yet
        are priced by a :class:`KernelModel` trained on the cache's other models, and the
        budget goes to the stages of the plans the DP picks, the largest latency-weighted
        spread first (no seed or uncertainty rounds). A cache without enough one-kernel
        measurements to train that model falls back to the unbudgeted search.
    """

    ensemble: int = 5
    min_train: int = 16
    seed_stages: int = 12
    batch: int = 4
    uncertainty_rounds: int = 2
    spread: float = 0.1
    optimism: float = 0.5
    plan_rounds: int = 12
    tolerance: float = 0.03
    patience: int = 3
    budget: float | None = None

    def __post_init__(self) -> None:
        if self.budget is not None and not (math.isfinite(self.budget) and self.budget > 0):
            raise ConfigError(f"LearnedSettings.budget must be > 0 (a fraction below 1, a "
                              f"count from 1) or None, not {self.budget!r}")
        for name in ("ensemble", "min_train", "plan_rounds", "patience"):
            if getattr(self, name) < 1:
                raise ConfigError(f"LearnedSettings.{name} must be >= 1")
        for name in ("seed_stages", "batch", "uncertainty_rounds"):
            if getattr(self, name) < 0:
                raise ConfigError(f"LearnedSettings.{name} must be >= 0")
        if self.spread < 0 or self.optimism < 0 or self.tolerance < 0:
            raise ConfigError("LearnedSettings.spread, optimism and tolerance must be >= 0")


def split_learned_cost(cost: Any) -> tuple[Any, LearnedSettings | None]:
    """``("learned", settings)`` for a ``cost=`` given as settings, else ``(cost, None)``.

    Wherever ``cost="learned"`` is accepted (``build``, ``bench``, the pass), a
    :class:`LearnedSettings` means the learned model with those settings (a budget, say).
    """
    if isinstance(cost, LearnedSettings):
        return "learned", cost
    return cost, None


class LearnedCost:
    """Stage cost that measures few stages and predicts the rest (see the module docstring).

    Parameters
    ----------
    graph
        The graph whose node ids the stages name.
    measured
        The measured cost model of the same graph: it times stages (and merge stages, which
        are always measured), reads and fills the cache, and keys stages by their kernels.
    config
        The search configuration; the candidate stages are those its search can ask for.
    cores
        The device's core (CPU) or SM (GPU) count, a feature.
    model_path
        Where the trained model is saved and read; default ``<cache>.learned.json`` when
        ``measured`` has an on-disk cache, else none.
    settings
        :class:`LearnedSettings`.
    on_mismatch
        ``"retrain"`` (default): a saved model that does not fit is refused with a warning and
        retrained from the cache; ``"raise"``: the :class:`~ios_tvm.errors.LearnedModelError`.
    """

    def __init__(self, graph: OpGraph, measured: MeasuredCost, *,
                 config: SearchConfig | None = None, cores: int = 1,
                 model_path: str | os.PathLike[str] | None = None,
                 settings: LearnedSettings | None = None, on_mismatch: str = "retrain") -> None:
        if on_mismatch not in ("retrain", "raise"):
            raise ConfigError(f"on_mismatch must be 'retrain' or 'raise', not {on_mismatch!r}")
        self.graph = graph
        self.measured = measured
        self.config = config or SearchConfig()
        self.cores = int(cores)
        self.settings = settings or LearnedSettings()
        self.on_mismatch = on_mismatch
        cache = measured.cache
        if model_path is None and cache is not None:
            model_path = cache.path.with_name(cache.path.name + ".learned.json")
        self.model_path = Path(model_path) if model_path is not None else None
        self.infos = kernel_infos(graph)
        #: Identifies this search (kernels, graph, configuration) in a saved model.
        self.search_id = hashlib.sha1(json.dumps(
            [measured.keys, graph.edges, self.config.to_json(), self.settings.budget]
            if self.settings.budget is not None else
            [measured.keys, graph.edges, self.config.to_json()]).encode()).hexdigest()[:16]
        self.model: LearnedModel | None = None
        #: Predicts the kernels not measured (only with a budget).
        self.kernel_model: KernelModel | None = None
        #: (latency s, spread of the log) of each op's kernel not measured yet, by op id.
        self.kernel_predicted: dict[int, tuple[float, float]] = {}
        #: Stages this search may measure (None: no limit); set by :meth:`prepare`.
        self.budget: int | None = None
        #: (mean latency s, spread of the log) predicted for unmeasured stages, by
        #: (op mask, strategy).
        self.predicted: dict[tuple[int, str], tuple[float, float]] = {}
        # -1: price unmeasured stages optimistically (exploring), +1: pessimistically (final).
        self._sign = -1.0
        #: What happened: how the model was obtained, rounds run, rows trained on, ...
        self.report: dict[str, Any] = {"model": None, "train_rows": 0, "seed_measured": 0,
                                       "uncertain_measured": 0, "plan_measured": 0,
                                       "plan_rounds": 0, "plan_verified": False,
                                       "fallback": None}
        self._prepared = False
        self._usable = xgboost_available()

    # -- measurements ----------------------------------------------------------------------
    def _known(self, stage: Stage) -> float | None:
        """A stage's measured latency (this session or the cache), else None; measures nothing."""
        m = self.measured
        key = m.stage_key(stage)
        if key in m.values:
            return m(stage)
        if m.cache is not None and m.cache.get(m.context, key) is not None:
            return m(stage)  # counts the cache hit and keeps the value
        return None

    def _measure(self, stages: Sequence[Stage]) -> int:
        """Measure the stages not known yet (in one batch); returns how many were new."""
        before = self.measured.measured
        self.measured.prefetch(stages)
        for s in stages:
            self.measured(s)
        return self.measured.measured - before

    def _kernel_table(self) -> dict[str, KernelInfo]:
        """Kernel features by kernel key: those stored beside the cache, and this graph's."""
        table = read_kernel_features(self.measured.cache)
        table.update(zip(self.measured.keys, self.infos, strict=True))
        return table

    # -- training ---------------------------------------------------------------------------
    def _all_rows(self) -> dict[str, dict[str, float]]:
        """Every measured stage, by context.

        This context's (the cache's and this session's), and its :func:`sibling_contexts`'.
        """
        own = self.measured.context
        rows = {ctx: {k: v for k, v, _ in r}
                for ctx, r in training_rows(self.measured.cache, own).items()}
        rows[own].update({k: v for k, v in self.measured.values.items() if math.isfinite(v)})
        return rows

    def training_set(self, rows: Mapping[str, float], table: Mapping[str, KernelInfo],
                     models: Mapping[str, set[str]] | None = None
                     ) -> tuple[list[list[float]], list[float], list[str]]:
        """Features, targets and models of the multi-kernel concurrent stages of ``rows``.

        The model of a stage is the first of ``models`` that has all its kernels, else
        ``"?"``. Only stages whose kernels are all known (features and single-kernel latency) count.
        A stage belongs to the first model of ``models`` that has all its kernels.
        """
        single: dict[str, float] = {}
        for key, value in rows.items():
            strategy, groups = parse_stage_key(key)
            if strategy == "concurrent" and len(groups) == 1 and len(groups[0]) == 1:
                single[groups[0][0]] = value
        x: list[list[float]] = []
        y: list[float] = []
        origin: list[str] = []
        for key, value in rows.items():
            strategy, groups = parse_stage_key(key)
            if strategy != "concurrent" or sum(len(g) for g in groups) < 2:
                continue
            if not all(k in single and k in table for g in groups for k in g):
                continue
            members = [[(single[k], table[k]) for k in g] for g in groups]
            x.append(stage_features(members, self.cores))
            y.append(math.log(value / sum(single[k] for g in groups for k in g)))
            kernels = {k for g in groups for k in g}
            origin.append(next((m for m, ks in sorted((models or {}).items())
                                if kernels <= ks), "?"))
        return x, y, origin

    def train(self) -> int:
        """(Re)train the ensemble on every usable measurement; returns the rows trained on."""
        table = self._kernel_table()
        models = read_model_kernels(self.measured.cache)
        models[model_id(self.measured.keys)] = set(self.measured.keys)
        all_rows = self._all_rows()
        if self.budget is not None:
            self._train_kernels(all_rows, table, models)
        x: list[list[float]] = []
        y: list[float] = []
        origin: list[str] = []
        for by_key in all_rows.values():
            cx, cy, co = self.training_set(by_key, table, models)
            x, y, origin = x + cx, y + cy, origin + co
        if not x:
            self.model = None
            return 0
        ens, config, errors = fit_ensemble(x, y, origin, size=self.settings.ensemble,
                                           seed=len(x))
        self.report["config"], self.report["cv_error"] = config, errors
        rows = tagged_rows(self.measured.cache, self.measured.context)
        until = max((r[2] for r in rows), default=0.0)
        self.model = LearnedModel(ens, self.measured.context, len(rows), rows_identity(rows),
                                  until, len(x))
        self.report["train_rows"] = len(x)
        self.report["model"] = "trained"
        return len(x)

    def _load_saved(self) -> bool:
        """Use the saved model if it fits and the cache has not grown since; else False."""
        if self.model_path is None or not self.model_path.is_file():
            return False
        try:
            model = load_learned_model(self.model_path, context=self.measured.context,
                                       cache=self.measured.cache)
        except LearnedModelError as e:
            if self.on_mismatch == "raise":
                raise
            logger.warning("refusing the saved learned cost model: %s; retraining", e)
            self.report["refused"] = str(e)
            return False
        rows = tagged_rows(self.measured.cache, self.measured.context)
        if len(rows) != model.cache_rows:
            return False  # trained on a prefix of the cache: retrain on all of it
        self.model = model
        self.report["train_rows"] = model.train_rows
        self.report["model"] = "saved"
        return True

    def _save(self) -> None:
        """Save the model beside the cache (not when there is none or it is read-only)."""
        if self.model is None or self.model_path is None or self.measured.cache is None \
                or self.measured.cache.read_only:
            return
        try:
            self.model.save(self.model_path)
        except OSError as e:
            logger.warning("cannot save the learned cost model to %s: %s", self.model_path, e)

    def _train_kernels(self, rows: Mapping[str, Mapping[str, float]],
                       table: Mapping[str, KernelInfo], models: Mapping[str, set[str]]) -> None:
        """(Re)fit the kernel model and re-predict this graph's unmeasured kernels."""
        self.kernel_model = fit_kernel_model(rows, table, models, self.cores,
                                             size=self.settings.ensemble)
        self.kernel_predicted.clear()
        if self.kernel_model is None:
            return
        self.report["kernel_config"] = self.kernel_model.config
        self.report["kernel_cv_error"] = self.kernel_model.cv_error
        own = rows[self.measured.context]
        ops = [op for op in range(len(self.graph.nodes))
               if self.measured.stage_key(Stage(((op,),))) not in own]
        if ops:
            lat, spread = self.kernel_model.predict([self.infos[op] for op in ops], self.cores,
                                                    weights_cold(self.measured.context))
            self.kernel_predicted = {op: (la, sd) for op, la, sd
                                     in zip(ops, lat, spread, strict=True)}

    def _kernel(self, op: int) -> tuple[float, float]:
        """Latency (s) of ``op``'s kernel and the spread of its log (0 when measured)."""
        m = self.measured
        key = m.stage_key(Stage(((op,),)))
        if key in m.values:
            return m.values[key], 0.0
        pred = self.kernel_predicted.get(op)
        if pred is not None:
            return pred
        return m(Stage(((op,),))), 0.0  # measured (unbudgeted) or a cache hit

    # -- prediction -------------------------------------------------------------------------
    def _predict(self, stages: Sequence[Stage]) -> tuple[list[float], list[float], list[float]]:
        """Mean latency, spread (log) and kernel-sum latency of each stage.

        The spread adds, in quadrature, the stage model's and (with a budget) that of the
        kernel-latency sum, its kernels' errors taken as independent.
        """
        groups_of = []
        sums = []
        kernel_spread = []
        for s in stages:
            kernels = [[self._kernel(op) + (self.infos[op],) for op in g] for g in s.groups]
            members = [[(lat, info) for lat, _, info in g] for g in kernels]
            groups_of.append(stage_features(members, self.cores))
            total = sum(lat for g in members for lat, _ in g)
            sums.append(total)
            kernel_spread.append(math.sqrt(sum((lat * sd) ** 2 for g in kernels
                                               for lat, sd, _ in g)) / total)
        if self.model is None:
            raise LearnedModelError("the learned cost model is not trained")
        mean, spread = self.model.ensemble.predict(groups_of)
        return ([sm * math.exp(mu) for sm, mu in zip(sums, mean, strict=True)],
                [math.hypot(sd, ks) for sd, ks in zip(spread, kernel_spread, strict=True)],
                sums)

    def _refresh(self, unknown: Sequence[Stage]) -> list[float]:
        """Re-predict ``unknown``; returns each one's latency-weighted spread."""
        self.predicted.clear()
        if not unknown:
            return []
        mean, spread, _ = self._predict(unknown)
        weights = []
        for s, mu, sd in zip(unknown, mean, spread, strict=True):
            self.predicted[(s.mask, s.strategy)] = (mu, sd)
            weights.append(mu * sd if sd > self.settings.spread else 0.0)
        return weights

    def _price(self, mean: float, spread: float) -> float:
        return mean * math.exp(self._sign * self.settings.optimism * spread)

    # -- the search-facing side --------------------------------------------------------------
    def prepare(self) -> None:
        """Measure what the model needs and verify the plan (see the module docstring)."""
        if self._prepared:
            return
        self._prepared = True
        t0 = time.perf_counter()
        cfg = self.config
        if cfg.strategy in ("sequential", "greedy"):
            self.report["fallback"] = f"strategy {cfg.strategy!r}: its stages are measured"
            return
        if cfg.strategy in ("merge", "both"):
            cfg = replace(cfg, strategy="concurrent")  # merge stages are measured on demand
        candidates = [s for s in candidate_stages(self.graph, cfg) if s.strategy == "concurrent"]
        if not self._usable:
            logger.warning("xgboost is not installed (pip install 'ios-tvm[learned]'): the "
                           "learned cost model measures every stage instead")
            self.report["fallback"] = "xgboost missing: every stage measured"
            return
        ops = len(self.graph.nodes)
        record_kernel_features(self.measured.cache, self.measured.keys, self.graph)
        if self.settings.budget is not None:
            self._start_budget(candidates)
        if self.budget is None:
            self._measure([Stage(((i,),)) for i in range(ops)])
        multi = [s for s in candidates if len(s.ops) > 1]
        # Twins (same kernels on other ops) share one measurement: reason per stage key.
        by_key: dict[str, Stage] = {}
        for s in multi:
            by_key.setdefault(self.measured.stage_key(s), s)
        distinct = list(by_key.values())

        def unknown() -> list[Stage]:
            return [s for s in distinct if self._known(s) is None]

        if not self._load_saved():
            self.train()
        todo = unknown()
        if self.model is not None and self.report["model"] == "saved" \
                and self.search_id in self.model.verified:
            # Verified before on this very cache: price as then, measure nothing.
            self._refresh(todo)
            self._sign = 1.0
            self.report["plan_verified"] = "before"
            self.report["seconds"] = time.perf_counter() - t0
            return
        if self.report["train_rows"] < self.settings.min_train and todo \
                and self.budget is None:
            # Too little data: measure spread-out candidates (by kernel-sum latency) first.
            sums = {id(s): sum(self.measured.values[self.measured.stage_key(Stage(((op,),)))]
                               for op in s.ops) for s in todo}
            order = sorted(todo, key=lambda s: sums[id(s)])
            n = min(self.settings.seed_stages, len(order))
            picks = [order[(2 * i + 1) * len(order) // (2 * n)] for i in range(n)] if n else []
            self.report["seed_measured"] = self._measure(picks)
            self.train()
            todo = unknown()
        if self.model is None:  # nothing to learn from (e.g. a graph without multi-op stages)
            self._measure(todo)
            self.report["fallback"] = "no training data: every stage measured"
            return
        for _ in range(self.settings.uncertainty_rounds if self.budget is None else 0):
            weights = self._refresh(todo)
            ranked = sorted((w, i) for i, w in enumerate(weights) if w > 0.0)[::-1]
            picks = [todo[i] for _, i in ranked[:self.settings.batch]]
            if not picks:
                break
            self.report["uncertain_measured"] += self._measure(picks)
            self.train()
            todo = unknown()
        self._refresh(todo)
        self._verify_plan(cfg, distinct)
        if self.model is not None:  # this search is done: a rerun measures nothing
            if self.report["model"] == "trained":
                self.model.verified = [self.search_id]
            elif self.search_id not in self.model.verified:
                self.model.verified.append(self.search_id)
        self._save()
        self.report["kernels_predicted"] = sum(
            1 for op in self.kernel_predicted
            if self.measured.stage_key(Stage(((op,),))) not in self.measured.values)
        self.report["seconds"] = time.perf_counter() - t0

    def _start_budget(self, candidates: Sequence[Stage]) -> None:
        """Set :attr:`budget` and train both models from the cache.

        Falls back (budget None) when the cache cannot train them.
        """
        b = float(self.settings.budget or 0.0)
        keys = {self.measured.stage_key(s) for s in candidates}
        self.budget = int(b) if b >= 1 else max(1, math.ceil(b * len(keys)))
        self.report["budget"] = self.budget
        self.train()
        if self.kernel_model is None or self.model is None:
            self.report["fallback_budget"] = (
                "the cache holds too few measurements of other models to predict unmeasured "
                "kernels: every kernel measured, no budget")
            logger.warning("learned cost: %s", self.report["fallback_budget"])
            self.budget, self.kernel_model = None, None
            self.kernel_predicted.clear()

    def _plan_picks(self, todo: Sequence[Stage], rounds_left: int) -> list[Stage]:
        """Which unmeasured plan stages to measure this round.

        All of them without a budget; with one, those of largest latency-weighted spread
        that this round's share of it allows.
        """
        if self.budget is None:
            return list(todo)
        left = self.budget - self.measured.measured
        share = max(self.settings.batch, math.ceil(left / max(rounds_left, 1)))

        def weight(s: Stage) -> float:
            if len(s.ops) == 1:
                lat, sd = self._kernel(s.ops[0])
                return lat * sd
            pred = self.predicted.get((s.mask, s.strategy))
            return pred[0] * pred[1] if pred is not None else math.inf

        return sorted(todo, key=weight, reverse=True)[:max(0, min(left, share))]

    def _verify_plan(self, cfg: SearchConfig, distinct: Sequence[Stage]) -> None:
        """Measure the stages of the plans the DP picks (see the module docstring).

        Each round prices unmeasured stages optimistically, so the DP's total is a lower
        bound of what any plan could cost if the model is right within its spread; the
        picked plan's unmeasured stages are measured. It stops when the plan is all
        measured, or when its measured total is within ``tolerance`` of that bound. The
        search proper then prices unmeasured stages pessimistically, so it keeps to measured
        stages unless a prediction is clearly better.
        """
        self._sign = -1.0
        best, stalled = math.inf, 0
        for rnd in range(self.settings.plan_rounds):
            self.report["plan_rounds"] = rnd + 1
            result = search(self.graph, self._value, cfg)
            bound = float(result.schedule.cost or 0.0)
            plan = result.schedule.stages
            todo = [s for s in plan if self._known(s) is None]
            self.report["bound_s"] = bound
            if not todo:
                self.report["plan_verified"] = True
                self.report["plan_measured_s"] = bound
                break
            picks = self._plan_picks(todo, self.settings.plan_rounds - rnd)
            if not picks:
                self.report["budget_spent"] = True
                break
            self.report["plan_measured"] += self._measure(picks)
            self.train()
            self._refresh([s for s in distinct if self._known(s) is None])
            # With a budget, the plan's stages still unmeasured count at their (optimistic)
            # price: the total is then a bound that tightens as measurements arrive.
            measured_total = sum(self._value(s) for s in plan)
            self.report["plan_measured_s"] = measured_total
            if measured_total <= bound * (1.0 + self.settings.tolerance):
                self.report["plan_verified"] = True
                break
            # A model biased low keeps the bound below every plan; stop when the measured
            # plans stop improving.
            stalled = stalled + 1 if measured_total >= best * (1.0 - 1e-3) else 0
            best = min(best, measured_total)
            if stalled >= self.settings.patience:
                self.report["plan_stalled"] = True
                break
        self._sign = 1.0

    def _value(self, stage: Stage) -> float:
        """Measured latency if known, else the predicted price (for the DP)."""
        if len(stage.ops) == 1 and stage.strategy == "concurrent" and self.budget is not None:
            lat, spread = self._kernel(stage.ops[0])
            return self._price(lat, spread) if spread > 0.0 else lat
        if len(stage.ops) == 1 or stage.strategy != "concurrent":
            return self.measured(stage)
        key = self.measured.stage_key(stage)
        if key in self.measured.values:
            return self.measured.values[key]
        pred = self.predicted.get((stage.mask, stage.strategy))
        if pred is None:  # a twin of a distinct candidate, or a stage outside the candidates
            known = self._known(stage)
            if known is not None:
                return known
            if self.model is None:
                return self.measured(stage)
            mean, spread, _ = self._predict([stage])
            pred = (mean[0], spread[0])
            self.predicted[(stage.mask, stage.strategy)] = pred
        return self._price(*pred)

    def __call__(self, stage: Stage) -> float:
        """Latency of ``stage`` in seconds: measured where known, else predicted."""
        if stage.strategy not in ("concurrent", "merge"):
            raise ConfigError(f"the learned cost model cannot price {stage.strategy!r} stages")
        self.prepare()
        if self.report["fallback"] is not None:
            return self.measured(stage)
        return self._value(stage)

    def close(self) -> None:
        """Finish the measured model's progress bar."""
        self.measured.close()

    def summary(self) -> dict[str, Any]:
        """Counters: stages measured, predicted, training rows, rounds."""
        return {**self.report, "measured": self.measured.measured,
                "cache_hits": self.measured.cache_hits, "predicted": len(self.predicted)}

