"""An .npz written piece by piece: arrays far larger than memory, in the layout `np.savez` gives.

Each array arrives in slices along its first axis (a shard of samples at a time). The slices go to
one raw file per array beside the output; on a clean exit every array is copied, in chunks, into
its own `NAME.npy` member of an uncompressed zip (as `np.savez` writes), and the file appears
atomically. `np.load` reads it like any other .npz.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import zipfile
from pathlib import Path
from types import TracebackType

import numpy as np

from vqgen.atomic_io import atomic_path

Spec = tuple[tuple[int, ...], type | np.dtype]


class NpzWriter:
    """`with NpzWriter(path, {"images": ((n, h, w, c), np.uint8)}) as f: f.write(images=piece) ...`"""

    def __init__(self, path: str | os.PathLike, arrays: dict[str, Spec]) -> None:
        self.path = Path(path)
        self.arrays = {name: (tuple(shape), np.dtype(dtype)) for name, (shape, dtype) in arrays.items()}
        self.rows = dict.fromkeys(self.arrays, 0)

    def __enter__(self) -> NpzWriter:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.scratch = Path(tempfile.mkdtemp(dir=self.path.parent, prefix=f".{self.path.name}.", suffix=".parts"))
        self.files = {name: open(self.scratch / name, "wb") for name in self.arrays}
        return self

    def write(self, **pieces: np.ndarray) -> None:
        """The next rows of some arrays: each piece is `k *shape[1:]` of its array's dtype."""
        for name, piece in pieces.items():
            if name not in self.arrays:
                raise KeyError(f"{self.path.name} has no array {name!r} (it has {sorted(self.arrays)})")
            shape, dtype = self.arrays[name]
            if piece.shape[1:] != shape[1:] or piece.dtype != dtype:
                raise ValueError(f"{name}: expected rows of shape {shape[1:]} and dtype {dtype}, "
                                 f"got {piece.shape[1:]} and {piece.dtype}")
            if self.rows[name] + len(piece) > shape[0]:
                raise ValueError(f"{name}: more than the {shape[0]} rows declared")
            self.files[name].write(np.ascontiguousarray(piece).tobytes())
            self.rows[name] += len(piece)

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None) -> None:
        try:
            for f in self.files.values():
                f.close()
            if kind is None:
                self._assemble()
        finally:
            shutil.rmtree(self.scratch, ignore_errors=True)

    def _assemble(self) -> None:
        short = {name: (rows, self.arrays[name][0][0]) for name, rows in self.rows.items()
                 if rows != self.arrays[name][0][0]}
        if short:
            raise ValueError(f"{self.path.name}: rows written / declared: {short}")
        with atomic_path(self.path) as tmp, zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED, allowZip64=True) as archive:
            for name, (shape, dtype) in self.arrays.items():
                with archive.open(f"{name}.npy", "w", force_zip64=True) as member, open(self.scratch / name, "rb") as raw:
                    header = {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False, "shape": shape}
                    np.lib.format.write_array_header_1_0(member, header)
                    shutil.copyfileobj(raw, member, 1 << 22)
