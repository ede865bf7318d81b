"""Per-GPU step-time profile: six coefficients, one per work count of :class:`sgl_qwen1m.scheduler.cost.StepWork`,
fitted by least squares from measured timings, stored as a small JSON keyed by GPU name.

=========================  =================================  =========================================
coefficient                unit                               multiplies
=========================  =================================  =========================================
``tokens``                 s / token                          linear layers (all layers)
``dense_flops``            s / FLOP                           dense attention FLOPs
``sparse_blocks``          s / computed 64x64 tile            vertical-slash kernel
``estimate_key_layers``    s / (key x layer)                  estimation pass (+ selection)
``kv_bytes``               s / KV byte                        decode KV reads
``steps``                  s / step                           fixed per-step overhead
=========================  =================================  =========================================

A coefficient no sample exercised stays ``None`` ("not measured"); :meth:`Profile.predict_s` refuses work that needs
it. ``provenance`` records, per coefficient, the samples (files and rows) it was fitted from.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Optional, Sequence, Union

from .cost import WORK_FIELDS, StepWork

if TYPE_CHECKING:
    from .cost import CostModel

__all__ = ["Sample", "FitResult", "Profile", "fit", "solve_least_squares", "Probe", "measurement_plan",
           "profile_path", "PROFILE_DIR", "stored_samples"]

PROFILE_DIR = Path(__file__).resolve().parent / "profiles"


@dataclass(frozen=True)
class Sample:
    """One measurement: the work it did and how long it took (seconds); ``source`` names the file/row."""

    work: StepWork
    seconds: float
    source: str = ""


def solve_least_squares(rows: Sequence[Sequence[float]], ys: Sequence[float]) -> list[float]:
    """``argmin_x sum_i (rows[i] . x - ys[i])**2`` through column-scaled normal equations (pure Python, small n).

    Raises ValueError naming the column when the columns are linearly dependent (the data do not determine it).
    """
    n = len(rows[0])
    scale = [math.sqrt(sum(r[j] ** 2 for r in rows)) or 1.0 for j in range(n)]
    a = [[sum(r[i] * r[j] for r in rows) / (scale[i] * scale[j]) for j in range(n)]
         + [sum(r[i] * y for r, y in zip(rows, ys)) / scale[i]] for i in range(n)]
    for col in range(n):  # Gauss-Jordan with partial pivoting
        piv = max(range(col, n), key=lambda r: abs(a[r][col]))
        if abs(a[piv][col]) < 1e-10:
            raise ValueError(f"column {col} is not determined by the samples (linearly dependent on others)")
        a[col], a[piv] = a[piv], a[col]
        for r in range(n):
            if r != col and a[r][col]:
                f = a[r][col] / a[col][col]
                a[r] = [x - f * y for x, y in zip(a[r], a[col])]
    return [a[i][n] / a[i][i] / scale[i] for i in range(n)]


@dataclass(frozen=True)
class FitResult:
    """Fitted coefficients (None: no sample exercised it, or it came out negative and was dropped) and per-sample
    relative residuals ``predicted / measured - 1``."""

    coefficients: dict[str, Optional[float]]
    residuals: list[tuple[str, float]]
    dropped: tuple[str, ...] = ()
    outliers: tuple[tuple[str, float], ...] = ()  # (sample, predicted / measured - 1) left out of the fit

    @property
    def max_abs_residual(self) -> float:
        return max((abs(r) for _, r in self.residuals), default=0.0)


def fit(samples: Sequence[Sample], relative: bool = True, outlier_factor: Optional[float] = None,
        max_outlier_share: float = 0.1) -> FitResult:
    """Least-squares coefficients from samples.

    ``relative``: weight each sample by ``1 / seconds`` (fits relative error, so 1 ms kernel rows and 30 s TTFT rows
    count alike). Work counts no sample has are left None. A coefficient fitted negative (the data cannot separate
    it from the others) is dropped (None, listed in ``dropped``) and the rest refitted.

    ``outlier_factor``: leave out, one at a time (worst first) and refitting after each, samples whose measured time
    is more than this factor away from the fit's prediction (either way), at most ``max_outlier_share`` of the
    samples; they are listed in ``outliers`` with their residual under the final fit. A step that compiled a kernel
    (the first sparse step, the first step across a DCA chunk boundary: 10-100x its neighbours on the 2026-12-08
    H100 probe ladder) is such a sample.
    """
    if outlier_factor is not None and not outlier_factor > 1:
        raise ValueError(f"outlier_factor must be > 1, got {outlier_factor}")
    kept = list(samples)
    out: list[Sample] = []
    res = _fit(kept, relative)
    while outlier_factor is not None and len(out) + 1 <= max_outlier_share * len(samples):
        ratios = [abs(math.log(max(r + 1.0, 1e-12))) for _, r in res.residuals]
        worst = max(range(len(kept)), key=ratios.__getitem__)
        if ratios[worst] <= math.log(outlier_factor):
            break
        out.append(kept.pop(worst))
        res = _fit(kept, relative)
    if not out:
        return res
    pred = {s.source: _predict(res.coefficients, s.work) / s.seconds - 1.0 for s in out}
    return FitResult(res.coefficients, res.residuals, res.dropped, tuple((s.source, pred[s.source]) for s in out))


def _predict(coef: Mapping[str, Optional[float]], work: StepWork) -> float:
    return sum(v * (coef[f] or 0.0) for f, v in zip(WORK_FIELDS, work.vector()))


def _fit(samples: Sequence[Sample], relative: bool) -> FitResult:
    if not samples:
        raise ValueError("fit needs at least one sample")
    bad = [s.source or str(i) for i, s in enumerate(samples) if not (s.seconds > 0 and math.isfinite(s.seconds))]
    if bad:
        raise ValueError(f"sample times must be finite and > 0; bad: {bad[:5]}")
    vecs = [s.work.vector() for s in samples]
    active = [j for j in range(len(WORK_FIELDS)) if any(v[j] for v in vecs)]
    dropped: list[str] = []
    while True:
        if not active:
            raise ValueError("no coefficient left to fit")
        if len(samples) < len(active):
            raise ValueError(f"{len(samples)} samples cannot determine {len(active)} coefficients "
                             f"({[WORK_FIELDS[j] for j in active]})")
        w = [1.0 / s.seconds if relative else 1.0 for s in samples]
        rows = [[v[j] * wi for j in active] for v, wi in zip(vecs, w)]
        try:
            x = solve_least_squares(rows, [s.seconds * wi for s, wi in zip(samples, w)])
        except ValueError as e:
            idx = int(str(e).split()[1])
            raise ValueError(f"coefficient {WORK_FIELDS[active[idx]]!r} is not determined by the samples "
                             "(its work is proportional to other work in every sample); add samples that vary it")
        neg = [k for k, xv in enumerate(x) if xv < 0]
        if not neg:
            break
        worst = min(neg, key=lambda k: x[k])
        dropped.append(WORK_FIELDS[active[worst]])
        del active[worst]
    coef: dict[str, Optional[float]] = {f: None for f in WORK_FIELDS}
    for j, xv in zip(active, x):
        coef[WORK_FIELDS[j]] = xv
    res = [(s.source, _predict(coef, s.work) / s.seconds - 1.0) for s in samples]
    return FitResult(coef, res, tuple(dropped))


@dataclass(frozen=True)
class Profile:
    """Step-time coefficients of one GPU (``gpu``: the name ``nvidia-smi`` reports)."""

    gpu: str
    coefficients: Mapping[str, Optional[float]]
    provenance: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        unknown = set(self.coefficients) - set(WORK_FIELDS)
        if unknown:
            raise ValueError(f"unknown profile coefficients {sorted(unknown)}; expected {list(WORK_FIELDS)}")
        for k, v in self.coefficients.items():
            if v is not None and not (v >= 0 and math.isfinite(v)):
                raise ValueError(f"profile coefficient {k}={v} must be finite and >= 0")

    def coef(self, name: str) -> Optional[float]:
        return self.coefficients.get(name)

    @property
    def missing(self) -> list[str]:
        return [f for f in WORK_FIELDS if self.coefficients.get(f) is None]

    def predict_s(self, work: StepWork) -> float:
        """Predicted seconds of ``work``; ValueError if it needs a coefficient this profile lacks."""
        total = 0.0
        for name, amount in zip(WORK_FIELDS, work.vector()):
            if not amount:
                continue
            c = self.coefficients.get(name)
            if c is None:
                raise ValueError(f"profile for {self.gpu!r} has no measured {name!r} coefficient but the step needs "
                                 f"{amount:.3g} of it; run `python -m sgl_qwen1m bench profile` on this GPU")
            total += c * amount
        return total

    def to_json(self) -> dict[str, Any]:
        return {"gpu": self.gpu, "coefficients": dict(self.coefficients), "provenance": dict(self.provenance)}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> "Profile":
        try:
            return cls(str(data["gpu"]), dict(data["coefficients"]), dict(data.get("provenance", {})))
        except KeyError as e:
            raise ValueError(f"profile JSON lacks {e.args[0]!r} (needs gpu, coefficients)") from None

    def save(self, path: Union[str, Path]) -> None:
        p = Path(path)
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(json.dumps(self.to_json(), indent=1, sort_keys=True) + "\n")

    @classmethod
    def load(cls, path: Union[str, Path]) -> "Profile":
        return cls.from_json(json.loads(Path(path).read_text()))

    @classmethod
    def for_gpu(cls, gpu: str, directory: Union[str, Path, None] = None) -> "Profile":
        """The stored profile whose file name matches ``gpu`` (see :func:`profile_path`)."""
        path = profile_path(gpu, directory)
        if not path.exists():
            have = sorted(p.stem for p in Path(directory or PROFILE_DIR).glob("*.json"))
            raise FileNotFoundError(f"no step-time profile for GPU {gpu!r} ({path.name}); have {have}; run "
                                    "`python -m sgl_qwen1m bench profile --out ...` on it")
        return cls.load(path)

    @classmethod
    def from_fit(cls, gpu: str, result: FitResult, provenance: Mapping[str, Any],
                 samples: Sequence[Sample] = ()) -> "Profile":
        """A profile of a fit; ``samples`` (those fitted and the outliers) are stored with it, so it can be refitted
        with more samples later (:func:`stored_samples`)."""
        prov = dict(provenance)
        prov["residuals"] = [{"sample": s, "rel_error": round(r, 4)} for s, r in result.residuals]
        prov["dropped_negative"] = list(result.dropped)
        if result.outliers:
            prov["outliers"] = [{"sample": s, "rel_error": round(r, 4)} for s, r in result.outliers]
        if samples:
            prov["samples"] = [{"sample": x.source, "seconds": float(f"{x.seconds:.6g}"),
                                "work": {f: v for f, v in zip(WORK_FIELDS, x.work.vector()) if v}} for x in samples]
        return cls(gpu, result.coefficients, prov)


def profile_path(gpu: str, directory: Union[str, Path, None] = None) -> Path:
    """``<directory>/<slug>.json``: "NVIDIA H100 80GB HBM3" -> ``h100.json``, "NVIDIA H200" -> ``h200.json``."""
    words = [w.lower() for w in gpu.replace(",", " ").split()]
    slug = next((w for w in words if w[:1] in "abhl" and any(ch.isdigit() for ch in w)), None)
    if slug is None:
        slug = "-".join(words) or "unknown"
    return Path(directory or PROFILE_DIR) / f"{slug}.json"


@dataclass(frozen=True)
class Probe:
    """One timed request of the profiling run: ``kind`` "prefill" extends a cached prefix of ``prefix`` tokens by
    ``extend`` (one step when ``extend <= chunked_prefill_size``); "decode" times ``steps`` decode steps of
    ``batch`` streams whose KV holds ``prefix`` tokens."""

    kind: str
    prefix: int
    extend: int = 0
    batch: int = 1
    steps: int = 0

    @property
    def name(self) -> str:
        """The sample name ``bench profile`` stores: ``prefill prefix=P extend=C`` or ``decode kv=S batch=B``."""
        if self.kind == "prefill":
            return f"prefill prefix={self.prefix} extend={self.extend}"
        return f"decode kv={self.prefix} batch={self.batch}"

    @classmethod
    def from_name(cls, name: str) -> "Probe":
        """The probe a :attr:`name` describes; ValueError for any other text."""
        m = _PROBE_NAME.match(name)
        if not m:
            raise ValueError(f"{name!r} is not a bench profile probe name")
        if m.group(1):
            return cls("prefill", int(m.group(1)), int(m.group(2)))
        return cls("decode", int(m.group(3)), batch=int(m.group(4)))

    def work(self, cost: "CostModel") -> StepWork:
        """The probe's work under ``cost`` (one step: its fixed part included)."""
        if self.kind == "prefill":
            return cost.prefill_work(self.prefix, self.extend) + StepWork(steps=1.0)
        return cost.decode_many([self.prefix] * self.batch) + StepWork(steps=1.0)


_PROBE_NAME = re.compile(r"^prefill prefix=(\d+) extend=(\d+)$|^decode kv=(\d+) batch=(\d+)$")


def measurement_plan(max_tokens: int, chunks: Sequence[int] = (1024, 4096, 8192, 16384),
                     decode_every: int = 4, decode_steps: int = 16) -> list[Probe]:
    """Prefill probes that grow one prompt through the radix cache to ``max_tokens`` with chunk sizes cycling
    through ``chunks`` (so steps of every size meet short and long prefixes, and the estimation pass's per-key cost
    separates from the per-token cost), plus a decode probe (batch 1 and 8) every ``decode_every`` prefill probes.
    """
    if max_tokens < max(chunks):
        raise ValueError(f"max_tokens {max_tokens} must be >= the largest chunk {max(chunks)}")
    if min(chunks) < 1 or decode_every < 1 or decode_steps < 1:
        raise ValueError("chunks, decode_every and decode_steps must be >= 1")
    out: list[Probe] = []
    prefix, i = 0, 0
    while prefix < max_tokens:
        c = min(chunks[i % len(chunks)], max_tokens - prefix)
        out.append(Probe("prefill", prefix, c))
        prefix += c
        i += 1
        if i % decode_every == 0:
            out += [Probe("decode", prefix, batch=b, steps=decode_steps) for b in (1, 8)]
    return out


def stored_samples(profile: Profile) -> list[Sample]:
    """The samples a profile was fitted from (``provenance.samples``, written by :meth:`Profile.from_fit`); empty
    when the profile does not carry them."""
    return [Sample(StepWork(**{f: float(v) for f, v in x["work"].items()}), float(x["seconds"]), str(x["sample"]))
            for x in profile.provenance.get("samples", ())]
