"""Which attention backend and which dummy-weight model directory each benchmark backend name means.

=========================  =========================  ======================================  =======
name                       ``--attention-backend``    model directory                         decode
=========================  =========================  ======================================  =======
``flashinfer``             ``flashinfer``             plain Qwen2.5 shape (no DCA config)     yes
``dual_chunk_flash_attn``  ``dual_chunk_flash_attn``  1M shape with the sparse budgets        no [1]
``qwen1m-dense``           ``qwen1m``                 1M shape, ``sparse_attention_enabled``  yes
                                                      false, no budgets file
``qwen1m-sparse``          ``qwen1m``                 1M shape with the sparse budgets        yes
``*-local``                as without the suffix      same, :mod:`.local_weights` recipe      as
                                                      per family, set after start
=========================  =========================  ======================================  =======

[1] SGLang's in-tree DCA backend needs FA3 (``flash_ops``) for decode and for dense prefill (chunks at or under
``sparse_attention_threshold``); the offline GPU bundle ships without it. So only its sparse prefill is timed: its
model directory sets ``sparse_attention_threshold: 0`` (every chunk sparse), and its workers run with the import
shim :mod:`sgl_qwen1m.bench.fa3_stub` (an empty ``flash_ops`` module, so the import succeeds and any real FA3
call still fails) and without the overlap scheduler (which would start a decode step).

``-local`` backends measure speed when attention decays with distance, as in trained models (see
:mod:`.local_weights`); the plain names keep SGLang's uniform dummy weights.

The directories hold only ``config.json`` (and ``sparse_attention_config.json``); weights are random
(``load_format="dummy"``). Copies of shared/gpu/models live in ``benchmarks/models/`` so the GPU host, which only
gets the repository, has them.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Union

from sgl_qwen1m.sizing import kv_dtype_label

__all__ = [
    "BackendSpec",
    "SPECS",
    "repo_root",
    "default_model_dirs",
    "parse_backends",
    "prepare_model_dir",
    "model_label",
    "kv_dtype_label",
    "source_dir",
]

SPARSE_FILE = "sparse_attention_config.json"


@dataclass(frozen=True)
class BackendSpec:
    """One benchmark backend: SGLang attention backend, model kind and capabilities."""

    name: str
    attention_backend: str
    uses_dca_model: bool
    sparse: Optional[bool]  # None: the model directory as it is
    decode: bool = True
    min_prompt_tokens: int = 1
    weights: str = "dummy"  # "local": .local_weights' recipe for the model family after the engine starts
    sparse_threshold: Optional[int] = None  # written into the model directory's DCA config when set
    fa3_stub: bool = False  # run the worker with bench/fa3_stub first on PYTHONPATH
    engine_args: tuple[tuple[str, Any], ...] = ()  # ServerArgs fields this backend needs (before --engine-arg)


_INTREE = BackendSpec(
    "dual_chunk_flash_attn",
    "dual_chunk_flash_attn",
    uses_dca_model=True,
    sparse=True,
    decode=False,
    sparse_threshold=0,
    fa3_stub=True,
    # the overlap scheduler launches the next decode step before it sees that a max_new_tokens=1 request is done,
    # and the in-tree decode needs FA3: without overlap, a prefill-only request never reaches decode
    engine_args=(("disable_overlap_schedule", True),),
)

SPECS: dict[str, BackendSpec] = {
    s.name: s
    for s in (
        BackendSpec("flashinfer", "flashinfer", uses_dca_model=False, sparse=None),
        _INTREE,
        dataclasses.replace(_INTREE, name="dual_chunk_flash_attn-local", weights="local"),
        BackendSpec("qwen1m-dense", "qwen1m", uses_dca_model=True, sparse=False),
        BackendSpec("qwen1m-sparse", "qwen1m", uses_dca_model=True, sparse=True),
        BackendSpec("qwen1m-sparse-local", "qwen1m", uses_dca_model=True, sparse=True, weights="local"),
    )
}


def model_label(shape_dir: Union[str, Path]) -> str:
    """The ``model`` field of result rows: the shape directory's name without ``-shape`` (``qwen2.5-7b-1m``)."""
    name = Path(shape_dir).resolve().name
    return name[: -len("-shape")] if name.endswith("-shape") else name


def source_dir(spec: "BackendSpec", shape_dir: Union[str, Path], dca_dir: Union[str, Path]) -> Path:
    """The model directory a backend serves (before ``prepare_model_dir`` writes its variant)."""
    return Path(dca_dir if spec.uses_dca_model else shape_dir)


def repo_root() -> Path:
    """The checkout this package runs from (has ``benchmarks/models``), else the current directory."""
    here = Path(__file__).resolve().parents[2]
    return here if (here / "benchmarks" / "models").is_dir() else Path.cwd()


def default_model_dirs() -> dict[str, Path]:
    """``{"shape": plain 7B dir, "dca": 7B-1M dir}`` under ``benchmarks/models``."""
    base = repo_root() / "benchmarks" / "models"
    return {"shape": base / "qwen2.5-7b-shape", "dca": base / "qwen2.5-7b-1m-shape"}


def parse_backends(text: str) -> list[str]:
    """``"flashinfer,qwen1m-dense"`` -> names, each checked against ``SPECS``; order kept, duplicates dropped."""
    names: list[str] = []
    for raw in text.split(","):
        name = raw.strip()
        if not name:
            continue
        if name not in SPECS:
            raise ValueError(f"unknown backend {name!r}; choose from {', '.join(SPECS)}")
        if name not in names:
            names.append(name)
    if not names:
        raise ValueError("no backend given")
    return names


def _write_variant(dca_dir: Path, cfg: dict, suffix: str, work_dir: Optional[Path], keep_budgets: bool) -> Path:
    """A copy of ``dca_dir`` with ``cfg`` as its config.json (budgets file kept only when ``keep_budgets``)."""
    out = Path(work_dir or tempfile.mkdtemp(prefix="sgl_qwen1m_bench_")) / f"{dca_dir.name}-{suffix}"
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    (out / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    for extra in dca_dir.iterdir():  # keep e.g. generation_config.json
        if extra.is_file() and extra.name != "config.json" and (keep_budgets or extra.name != SPARSE_FILE):
            shutil.copy2(extra, out / extra.name)
    return out


def prepare_model_dir(spec: BackendSpec, shape_dir: Path, dca_dir: Path, work_dir: Optional[Path] = None) -> Path:
    """The model directory to start ``spec`` with; a variant is written under ``work_dir`` when needed.

    * no DCA model: ``shape_dir`` (must lack ``dual_chunk_attention_config``);
    * ``sparse=True``: ``dca_dir`` (must hold the budgets file, so SGLang injects and enables it), or a copy with
      ``sparse_attention_threshold`` set when the spec overrides it;
    * ``sparse=False``: a copy of ``dca_dir/config.json`` with ``sparse_attention_enabled: false`` and no
      budgets file, so neither SGLang nor ``sgl_qwen1m.config.DCAConfig`` turns sparse prefill on.
    """
    if not spec.uses_dca_model:
        cfg = json.loads((shape_dir / "config.json").read_text())
        if "dual_chunk_attention_config" in cfg:
            raise ValueError(f"{shape_dir} has dual_chunk_attention_config; backend {spec.name} needs a plain shape")
        return shape_dir
    cfg = json.loads((dca_dir / "config.json").read_text())
    if "dual_chunk_attention_config" not in cfg:
        raise ValueError(f"{dca_dir}/config.json lacks dual_chunk_attention_config (needed by {spec.name})")
    if spec.sparse is None:
        return dca_dir
    dca = dict(cfg["dual_chunk_attention_config"])
    if spec.sparse:
        if not (dca_dir / SPARSE_FILE).exists():
            raise ValueError(f"{dca_dir} has no {SPARSE_FILE}; backend {spec.name} needs the sparse budgets")
        if dca.get("sparse_attention_enabled") is False:
            raise ValueError(f"{dca_dir}/config.json disables sparse attention; backend {spec.name} needs it on")
        if spec.sparse_threshold is None:
            return dca_dir
        cfg["dual_chunk_attention_config"] = dict(dca, sparse_attention_threshold=spec.sparse_threshold)
        return _write_variant(dca_dir, cfg, f"threshold{spec.sparse_threshold}", work_dir, keep_budgets=True)
    dca["sparse_attention_enabled"] = False
    dca.pop("sparse_attention_config", None)
    cfg["dual_chunk_attention_config"] = dca
    return _write_variant(dca_dir, cfg, "dense", work_dir, keep_budgets=False)
