r"""Training logs: per-iteration, per-sample records of an iterative reconstruction.

A :class:`TrainingLog` is a table with one row ("record") per logged iteration and, for every
per-sample column, one value per sample of the batch. The solvers of :func:`phasetorch.reconstruct`
write these columns (names shared with the theory's ``Prediction``, so an overlay is a join on
``iteration``):

==============  =====================================================================================
``iteration``   the iteration t (0 = the initial point); one integer per record
``time``        wall-clock seconds since the call started (initialisation included); one per record
``loss``        the algorithm's objective f(x_t) per sample (see :mod:`phasetorch.losses`)
``grad_norm``   ‖∇f(x_t)‖ per sample (for GS/HIO: of the amplitude loss)
``step``        the step size α_t that produced x_t (0 at t = 0 and for samples that have stopped)
``norm``        ‖x_t‖ per sample
``residual``    relative amplitude residual ‖|Ax_t| − √y₊‖ / ‖√y₊‖ (the stopping statistic)
``rel_error``   min_φ ‖x_t − e^{iφ}x*‖/‖x*‖ (only with ``x_true``)
``overlap``     |⟨x_t, x*⟩| / (‖x_t‖‖x*‖) (only with ``x_true``)
``inner``       |⟨x_t, x*⟩| / ‖x*‖² — the theory's m(t) when ‖x*‖ = 1 (only with ``x_true``)
==============  =====================================================================================

Other producers (e.g. :mod:`phasetorch.theory` simulations) build logs with :meth:`TrainingLog.append`.
``log["overlap"]`` is a float64 tensor of shape ``(records, B)`` with B = prod(batch_shape) (1 for an
unbatched run); ``log["iteration"]`` and ``log["time"]`` have shape ``(records,)``.
"""

from __future__ import annotations

import csv
import json
import stat
import math
import os
import tempfile
from pathlib import Path
from typing import IO, Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple, Union

import torch

from .tensors import from_json_float, to_jsonable

SCALAR_COLUMNS = ("iteration", "time")
STANDARD_COLUMNS = ("iteration", "loss", "grad_norm", "step", "norm", "time", "residual",
                    "rel_error", "overlap", "inner")
FORMAT = "phasetorch.TrainingLog"
VERSION = 1

Number = Union[int, float]


# ------------------------------------------------------------------------------ files
def write_atomic(path, write: Callable[[IO[str]], None], *, newline: Optional[str] = None) -> Path:
    """Write a text file atomically: ``write(fh)`` fills a unique temporary file in the same folder,
    which is flushed, fsynced and ``os.replace``-d onto ``path``. A write that fails or is killed
    leaves the previous file (if any) intact and no partial or 0-byte file under ``path``; the
    temporary file is removed on error. The new file gets the old file's permissions, or the
    umask's default for a new one. Returns the path."""
    p = Path(path)
    if p.is_dir():
        raise ValueError(f"{str(p)!r} is a directory; give a file name inside it")
    folder = p.parent if str(p.parent) else Path(".")
    if not folder.is_dir():
        raise ValueError(f"cannot write {str(p)!r}: the folder {str(folder)!r} does not exist; create it first")
    try:
        mode = p.stat().st_mode & 0o7777
    except OSError:
        umask = os.umask(0)
        os.umask(umask)
        mode = 0o666 & ~umask
    fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline=newline) as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, p)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    return p


def read_json_file(path, what: str) -> Any:
    """The parsed content of the JSON file ``path`` (a ``what``, e.g. ``"TrainingLog"``), with a
    ValueError naming the file and the problem for a missing file, a directory, an unreadable or
    non-UTF-8 file, an empty one or invalid (e.g. truncated) JSON."""
    p = Path(path)
    if p.is_dir():
        raise ValueError(f"{str(p)!r} is a directory, not a {what} JSON file; give the file inside it")
    if not p.exists():
        raise ValueError(f"{what} file {str(p)!r} does not exist")
    if not stat.S_ISREG(p.stat().st_mode):
        raise ValueError(f"{str(p)!r} is not a regular file (a FIFO, socket or device); give a {what} JSON file")
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ValueError(f"{str(p)!r} is not a {what} JSON file: it is not UTF-8 text") from None
    except OSError as err:
        raise ValueError(f"cannot read {what} file {str(p)!r}: {err.strerror or err}") from None
    if not text.strip():
        raise ValueError(f"{str(p)!r} is empty, not a {what} JSON file (was its write interrupted?)")
    try:
        return json.loads(text, parse_constant=_refuse_constant, parse_float=_finite_float)
    except json.JSONDecodeError as err:
        raise ValueError(f"{str(p)!r} is not valid JSON (truncated?): {err.msg} at line {err.lineno}, "
                         f"column {err.colno}; it is not a readable {what}") from None
    except _NonStandardNumber as err:
        raise ValueError(f"{str(p)!r} holds {err}, which strict JSON has no place for: phasetorch writes NaN "
                         f"as null and ±inf as \"inf\"/\"-inf\", so the file was altered or not written by "
                         f"phasetorch; it is not a readable {what}") from None


class _NonStandardNumber(ValueError):
    """A JSON number phasetorch never writes: the NaN/Infinity literals, or a literal beyond float range."""


def _refuse_constant(name: str):
    raise _NonStandardNumber(f"the non-standard JSON literal {name}")


def _finite_float(text: str) -> float:
    v = float(text)
    if not math.isfinite(v):
        raise _NonStandardNumber(f"the number {text[:40]}, beyond the range of a float")
    return v


def _json_kind(obj: Any) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean", type(None): "null"}.get(
        type(obj), "a number")


class TrainingLog:
    """Per-iteration records of a (batched) run; see the module docstring for the columns.

    Parameters
    ----------
    batch_shape : the batch shape of the run (``()`` for a single unbatched sample).
    config : a dict describing the run (operator config, algorithm, seed, δ, step, l2, …); stored
        as given and written to JSON with tensors/dtypes converted.
    columns : optional column order to reserve up front (``"iteration"`` always comes first).
    """

    def __init__(self, batch_shape: Sequence[int] = (), config: Optional[dict] = None,
                 columns: Optional[Iterable[str]] = None) -> None:
        self.batch_shape = tuple(int(b) for b in batch_shape)
        self.batch_size = math.prod(self.batch_shape)
        self.config: Dict[str, Any] = dict(config or {})
        self._columns: List[str] = ["iteration"]
        self._on_device = False                 # whether some record still lives on an accelerator
        self._store: Dict[str, List[Any]] = {"iteration": []}
        #: records of :meth:`append_stacked` not yet split into columns: (iteration, names, values, time)
        self._pending: List[Tuple[int, Tuple[str, ...], torch.Tensor, float]] = []
        for c in columns or ():
            self._add_column(c)

    # ------------------------------------------------------------------ building
    @property
    def _data(self) -> Dict[str, List[Any]]:
        """The columns, record by record (pending stacked records are split in first)."""
        if self._pending:
            self._settle()
        return self._store

    def _settle(self) -> None:
        """Split the pending stacked records into their columns: one stack and one conversion for all
        of them (a solver loop pays one tensor operation per record, not one per column)."""
        pending, self._pending = self._pending, []
        i = 0
        while i < len(pending):                      # runs of records with the same columns
            j = i
            while j < len(pending) and pending[j][1] == pending[i][1]:
                j += 1
            names = pending[i][1]
            block = torch.stack([p[2] for p in pending[i:j]]).to(torch.float64)       # (records, K, B)
            for (it, _, _, tm), rec in zip(pending[i:j], block.unbind(0)):
                rows: Dict[str, Any] = dict(zip(names, rec.unbind(0)))
                if "time" in self._store:
                    rows["time"] = tm
                self._push(it, rows)
            i = j

    def _add_column(self, name: str) -> None:
        if not isinstance(name, str) or not name:
            raise ValueError(f"a column name must be a non-empty string, got {name!r}")
        if name in self._data:
            return
        self._columns.append(name)
        fill = float("nan")
        if name in SCALAR_COLUMNS:
            self._data[name] = [fill] * len(self)
        else:
            self._data[name] = [torch.full((self.batch_size,), fill, dtype=torch.float64) for _ in range(len(self))]

    def _as_row(self, name: str, value: Any) -> Any:
        if name in SCALAR_COLUMNS:
            if isinstance(value, torch.Tensor):
                if value.numel() != 1:
                    raise ValueError(f"column {name!r} holds one number per record, got a tensor of shape "
                                     f"{tuple(value.shape)}")
                value = value.item()
            return float(value)
        t = torch.as_tensor(value.detach() if isinstance(value, torch.Tensor) else value)
        if t.is_complex():
            raise ValueError(f"column {name!r}: values must be real, got a complex tensor")
        # an accelerator's values stay there until the log is read (no host round trip per record)
        t = t.to(dtype=torch.float64)
        if t.numel() == 1 and self.batch_size != 1:
            return t.reshape(()).expand(self.batch_size).clone()
        if t.numel() != self.batch_size:
            raise ValueError(f"column {name!r}: expected one value per sample ({self.batch_size} for batch shape "
                             f"{self.batch_shape}) or a single number, got shape {tuple(t.shape)}")
        return t.reshape(self.batch_size).clone()

    def append(self, iteration: int, **values: Any) -> None:
        """Add one record: ``log.append(t, loss=..., overlap=..., time=...)``.

        Per-sample columns take a tensor (or sequence) with one value per sample (any shape with
        B elements, e.g. the batch shape) or a single number (broadcast to all samples). ``time``
        and ``iteration`` take one number. New column names may appear at any record: earlier
        records get NaN; columns missing from this record get NaN.
        """
        if isinstance(iteration, torch.Tensor):
            iteration = iteration.item()
        if isinstance(iteration, float) and not iteration.is_integer():
            raise ValueError(f"iteration must be an integer, got {iteration}")
        it = int(iteration)
        rows = {name: self._as_row(name, v) for name, v in values.items()}  # validate before mutating
        for name in rows:
            self._add_column(name)
        self._push(it, rows)

    def _push(self, iteration: int, rows: Dict[str, Any]) -> None:
        """Append one validated record; columns absent from ``rows`` get NaN."""
        self._on_device = self._on_device or any(isinstance(v, torch.Tensor) and v.device.type != "cpu"
                                                 for v in rows.values())
        data = self._data                     # earlier pending records first (keeps the order)
        data["iteration"].append(iteration)
        for name in self._columns[1:]:
            if name in rows:
                data[name].append(rows[name])
            elif name in SCALAR_COLUMNS:
                data[name].append(float("nan"))
            else:
                data[name].append(torch.full((self.batch_size,), float("nan"), dtype=torch.float64))

    def append_stacked(self, iteration: int, names: Sequence[str], values: torch.Tensor, time: float) -> None:
        """Fast path of :meth:`append` for a solver loop: per-sample columns ``names`` given as the
        rows of one real tensor ``values`` of shape ``(len(names), B)`` (owned by the log from now
        on: one conversion for the whole record, which stays on its device until the log is read),
        plus the ``time`` of the record. Columns must already exist."""
        if values.dim() != 2 or values.shape[0] != len(names) or values.shape[1] != self.batch_size:
            raise ValueError(f"values must have shape ({len(names)}, {self.batch_size}), got {tuple(values.shape)}")
        missing = [nm for nm in names if nm not in self._store]
        if missing or values.is_complex():
            raise ValueError(f"append_stacked needs existing columns and real values (missing: {missing})")
        # kept whole until the log is read (:meth:`_settle`); the values stay on their device until then
        self._on_device = self._on_device or values.device.type != "cpu"
        self._pending.append((int(iteration), tuple(names), values.detach() if values.requires_grad else values,
                              float(time)))

    @classmethod
    def join(cls, logs: Sequence["TrainingLog"], config: Optional[dict] = None) -> "TrainingLog":
        """One log whose samples are those of ``logs`` side by side (1-D batches, in order): every log
        must hold the same records (iterations) and columns. ``config`` (default the first log's)
        describes the joined run; the time column is the largest of the logs' (a parallel run ends
        when its slowest part does). Used to combine the shares of a run split over processes."""
        logs = list(logs)
        if not logs:
            raise ValueError("TrainingLog.join needs at least one log")
        first = logs[0]
        for lg in logs[1:]:
            if lg._data["iteration"] != first._data["iteration"] or lg.columns != first.columns:
                raise ValueError("TrainingLog.join: the logs hold different records or columns")
        out = cls(batch_shape=(sum(lg.batch_size for lg in logs),),
                  config=dict(first.config if config is None else config), columns=first.columns[1:])
        cols = {name: [lg[name] for lg in logs] for name in first.columns[1:]}
        for i, it in enumerate(first._data["iteration"]):
            row = {}
            for name, parts in cols.items():
                row[name] = (max(float(pt[i]) for pt in parts) if name in SCALAR_COLUMNS
                             else torch.cat([pt[i] for pt in parts]))
            out._push(int(it), row)
        return out

    def drop_after(self, iteration: int) -> int:
        """Remove the trailing records whose iteration exceeds ``iteration``; returns how many went.

        (The solver loop reads its stopping decisions every k iterations; what it recorded in the
        iterations after the last sample stopped is removed, so the log is the one of a loop that
        stopped at once.)"""
        its = self._data["iteration"]
        keep = len(its)
        while keep and its[keep - 1] > iteration:
            keep -= 1
        gone = len(its) - keep
        if gone:
            for rows in self._data.values():
                del rows[keep:]
        return gone

    def _to_host(self) -> None:
        """Move the records still on an accelerator to the CPU: one copy per column and device
        (nothing to do, and no walk over the records, once they are all on the host)."""
        if self._pending:
            self._settle()                    # pending records mark the log as on a device when they are
        if not self._on_device:
            return
        self._on_device = False
        for name in self._columns[1:]:
            rows = self._data[name]
            if name in SCALAR_COLUMNS:
                continue
            on_device: Dict[torch.device, List[int]] = {}
            for i, r in enumerate(rows):
                if r.device.type != "cpu":
                    on_device.setdefault(r.device, []).append(i)
            for idx in on_device.values():
                for i, r in zip(idx, torch.stack([rows[i] for i in idx]).cpu().unbind(0)):
                    rows[i] = r

    # ------------------------------------------------------------------ reading
    @property
    def columns(self) -> List[str]:
        """Column names, ``"iteration"`` first, then in order of first appearance."""
        return list(self._columns)

    def __len__(self) -> int:
        return len(self._data["iteration"])

    def __contains__(self, name: str) -> bool:
        return name in self._data

    def __getitem__(self, name: str) -> torch.Tensor:
        """``(records,)`` for ``iteration`` (int64) and ``time``; ``(records, B)`` float64 otherwise."""
        if name not in self._data:
            raise KeyError(f"no column {name!r} in this log; columns are {', '.join(self._columns)}")
        self._to_host()
        rows = self._data[name]
        if name == "iteration":
            return torch.tensor(rows, dtype=torch.int64)
        if name in SCALAR_COLUMNS:
            return torch.tensor(rows, dtype=torch.float64)
        if not rows:
            return torch.zeros(0, self.batch_size, dtype=torch.float64)
        return torch.stack(rows)

    @property
    def iterations(self) -> torch.Tensor:
        """The logged iteration numbers, shape ``(records,)``."""
        return self["iteration"]

    def final(self, name: str) -> torch.Tensor:
        """The last record of a column: shape ``(B,)`` (a 0-dim tensor for ``iteration``/``time``)."""
        if len(self) == 0:
            raise ValueError("the log is empty")
        return self[name][-1]

    def mean(self, name: str) -> torch.Tensor:
        """Mean over the batch, shape ``(records,)`` (NaN entries ignored)."""
        v = self[name].to(torch.float64)
        if name in SCALAR_COLUMNS:
            return v
        return torch.nanmean(v, dim=1)

    def stderr(self, name: str) -> torch.Tensor:
        """Standard error of the batch mean, s/√B with s the sample standard deviation (ddof = 1).

        Shape ``(records,)``; NaN where fewer than two samples have finite values; zeros for the
        per-record columns ``iteration`` and ``time``.
        """
        v = self[name].to(torch.float64)
        if name in SCALAR_COLUMNS:
            return torch.zeros_like(v)
        ok = ~torch.isnan(v)
        k = ok.sum(dim=1).to(torch.float64)
        mu = torch.nanmean(v, dim=1, keepdim=True)
        dev = torch.where(ok, (v - mu) ** 2, torch.zeros_like(v)).sum(dim=1)
        var = dev / (k - 1).clamp_min(1)
        se = (var / k.clamp_min(1)).sqrt()
        return torch.where(k >= 2, se, torch.full_like(se, float("nan")))

    def select(self, index: Union[int, Sequence[int], torch.Tensor]) -> "TrainingLog":
        """A new log restricted to some samples (flat indices into the batch)."""
        if isinstance(index, int):
            idx = [index]
            shape: tuple = ()
        else:
            idx = [int(i) for i in (index.tolist() if isinstance(index, torch.Tensor) else index)]
            shape = (len(idx),)
        for i in idx:
            if not -self.batch_size <= i < self.batch_size:
                raise ValueError(f"sample index {i} out of range for a batch of {self.batch_size}")
        self._to_host()
        out = TrainingLog(shape, dict(self.config), self._columns[1:])
        sel = torch.tensor(idx, dtype=torch.int64)
        out._data["iteration"] = list(self._data["iteration"])
        for name in self._columns[1:]:
            rows = self._data[name]
            out._data[name] = list(rows) if name in SCALAR_COLUMNS else [r.index_select(0, sel % self.batch_size)
                                                                         for r in rows]
        return out

    # ------------------------------------------------------------------ persistence
    def to_dict(self) -> dict:
        """A JSON-serialisable dict (non-finite numbers as the strings "nan", "inf", "-inf")."""
        self._to_host()
        data: Dict[str, Any] = {}
        for name in self._columns:
            rows = self._data[name]
            if name == "iteration":
                data[name] = list(rows)
            elif name in SCALAR_COLUMNS:
                data[name] = [to_jsonable(v) for v in rows]
            else:
                data[name] = [[to_jsonable(v) for v in r.tolist()] for r in rows]
        return {"format": FORMAT, "version": VERSION, "batch_shape": list(self.batch_shape),
                "columns": list(self._columns), "config": to_jsonable(self.config), "data": data}

    @classmethod
    def from_dict(cls, d: dict) -> "TrainingLog":
        """Inverse of :meth:`to_dict`; a ValueError saying what is wrong for anything else."""
        if not isinstance(d, dict):
            raise ValueError(f"not a phasetorch TrainingLog: the JSON holds {_json_kind(d)}, expected an object "
                             f"with 'format': {FORMAT!r} (was it written by TrainingLog.to_json?)")
        if d.get("format") != FORMAT:
            raise ValueError("not a phasetorch TrainingLog (missing format tag); "
                             "was it written by TrainingLog.to_json?")
        version = d.get("version", 0)
        if isinstance(version, bool) or not isinstance(version, int):
            raise ValueError(f"TrainingLog: 'version' must be an integer, got {version!r}")
        if version > VERSION:
            raise ValueError(f"TrainingLog format version {version} is newer than this phasetorch "
                             f"({VERSION}); upgrade phasetorch")
        for key in ("batch_shape", "columns", "data"):
            if key not in d:
                raise ValueError(f"TrainingLog: missing key {key!r} (the file is incomplete or was not written by "
                                 f"TrainingLog.to_json)")
        shape, columns, data, config = d["batch_shape"], d["columns"], d["data"], d.get("config", {})
        if not isinstance(shape, list) or not all(isinstance(b, int) and not isinstance(b, bool) and b >= 0
                                                  for b in shape):
            raise ValueError(f"TrainingLog: 'batch_shape' must be a list of non-negative ints, got {shape!r}")
        if not isinstance(columns, list) or not all(isinstance(c, str) and c for c in columns) \
                or "iteration" not in columns:
            raise ValueError(f"TrainingLog: 'columns' must be a list of column names including 'iteration', "
                             f"got {columns!r}")
        if not isinstance(data, dict):
            raise ValueError(f"TrainingLog: 'data' must be an object (column → records), got {_json_kind(data)}")
        if not isinstance(config, dict):
            raise ValueError(f"TrainingLog: 'config' must be an object, got {_json_kind(config)}")
        missing = [c for c in columns if c not in data]
        if missing:
            raise ValueError(f"TrainingLog: missing column {missing[0]!r} in 'data' (columns: {', '.join(columns)})")
        log = cls(tuple(shape), config, [c for c in columns if c != "iteration"])
        its = data["iteration"]
        if not isinstance(its, list) or not all((isinstance(v, int) and not isinstance(v, bool))
                                                or (isinstance(v, float) and v.is_integer()) for v in its):
            raise ValueError("TrainingLog: 'iteration' must be a list of integers")
        log._data["iteration"] = [int(v) for v in its]
        for name in log._columns[1:]:
            rows = data[name]
            if not isinstance(rows, list):
                raise ValueError(f"TrainingLog: column {name!r} must be a list of records, got {_json_kind(rows)}")
            if len(rows) != len(its):
                raise ValueError(f"column {name!r} has {len(rows)} records but 'iteration' has {len(its)}")
            if name in SCALAR_COLUMNS:
                log._data[name] = [from_json_float(v) for v in rows]
                continue
            records = []
            for r in rows:
                if not isinstance(r, list) or len(r) != log.batch_size:
                    got = f"{len(r)} values" if isinstance(r, list) else _json_kind(r)
                    raise ValueError(f"column {name!r}: a record has {got}, expected a list of {log.batch_size} "
                                     f"values (batch shape {log.batch_shape})")
                records.append(torch.tensor([from_json_float(v) for v in r], dtype=torch.float64))
            log._data[name] = records
        return log

    def to_json(self, path) -> None:
        """Write the log (records, columns, batch shape, config) as strict JSON, atomically
        (:func:`write_atomic`: a failed write leaves the previous file intact)."""
        d = self.to_dict()
        write_atomic(path, lambda fh: json.dump(d, fh, allow_nan=False))

    @classmethod
    def from_json(cls, path) -> "TrainingLog":
        """Read a log written by :meth:`to_json`; ValueError naming the file and what is wrong for a
        missing, empty, truncated or foreign file (:func:`read_json_file`)."""
        d = read_json_file(path, "TrainingLog")
        try:
            return cls.from_dict(d)
        except ValueError as err:
            raise ValueError(f"{str(Path(path))!r}: {err}") from None

    def to_csv(self, path) -> None:
        """Write a long-format CSV: one row per (record, sample) with columns ``iteration, sample, ...``.

        Per-record columns (``time``) repeat on every sample's row; ``sample`` is the flat index
        into the batch. Floats are written with full precision (``repr``). Written atomically
        (:func:`write_atomic`).
        """
        self._to_host()
        names = self._columns[1:]

        def write(fh) -> None:
            w = csv.writer(fh)
            w.writerow(["iteration", "sample", *names])
            for r, it in enumerate(self._data["iteration"]):
                for b in range(self.batch_size):
                    row: List[Any] = [it, b]
                    for name in names:
                        v = self._data[name][r]
                        row.append(repr(float(v if name in SCALAR_COLUMNS else v[b])))
                    w.writerow(row)

        write_atomic(path, write, newline="")

    def __repr__(self) -> str:
        return (f"TrainingLog(records={len(self)}, batch_shape={self.batch_shape}, "
                f"columns={self._columns})")


__all__ = ["TrainingLog", "STANDARD_COLUMNS", "SCALAR_COLUMNS", "write_atomic", "read_json_file"]
