"""Preprocessed samples on disk: decode + preprocess a split once, then serve epochs from it.

A cache is one folder ``<cache_dir>/<name>-<key>/`` where ``key`` hashes every parameter that
shapes the tensors (reader, root, split, locations, size, audio mode, rgb, max_depth, the
recipe's parameters, the split CSVs' content) and ``CACHE_FORMAT_VERSION``, so a changed parameter
lands in a new folder and never reuses a stale one. Inside::

    <key>.npy        one (N, ...) array per tensor key of the sample (audio, depth, rgb),
                     memory-mapped on read; ``valid`` is not stored, it is ``depth > 0``
    meta.json        the N ``meta`` dicts
    manifest.json    format version, parameters, N, shapes and dtypes; written last

A cache is built in a temporary sibling folder and renamed into place, so a killed build never
leaves a half cache under the final name.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable, Dict, Mapping, Optional, Union

import numpy as np
import torch
from tqdm import tqdm

from datasets.errors import DataError
from datasets.sample import DEPTH, META, VALID, Sample

CACHE_FORMAT_VERSION = 1
MANIFEST = "manifest.json"
META_FILE = "meta.json"


def cache_folder(cache_dir: Union[str, "os.PathLike[str]"], name: str,
                 params: Mapping[str, Any]) -> Path:
    """Folder of the cache for ``params`` (JSON-serialisable) under ``cache_dir``."""
    keyed = json.dumps({"version": CACHE_FORMAT_VERSION, "params": params}, sort_keys=True)
    return Path(cache_dir) / f"{name}-{hashlib.sha256(keyed.encode()).hexdigest()[:20]}"


class SampleCache:
    """Read side of a built cache: ``cache[i]`` is the sample dict, equal to the source's.

    The arrays are memory-mapped lazily in each process (and dropped when pickled into
    DataLoader workers), so opening is cheap and workers share the page cache.
    """

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self.manifest = json.loads((self.folder / MANIFEST).read_text())
        self.metas = json.loads((self.folder / META_FILE).read_text())
        self._arrays: Optional[Dict[str, np.ndarray]] = None

    def __len__(self) -> int:
        return self.manifest["length"]

    def __getstate__(self) -> Dict[str, Any]:
        return {**self.__dict__, "_arrays": None}

    def __getitem__(self, i: int) -> Sample:
        if self._arrays is None:
            self._arrays = {key: np.load(self.folder / f"{key}.npy", mmap_mode="r")
                            for key in self.manifest["arrays"]}
        sample: Sample = {key: torch.from_numpy(np.array(array[i]))
                          for key, array in self._arrays.items()}
        sample[VALID] = sample[DEPTH] > 0
        sample[META] = dict(self.metas[i])
        return sample


def build_cache(folder: Path, params: Mapping[str, Any], length: int,
                load_sample: Callable[[int], Sample]) -> None:
    """Write samples ``load_sample(0 .. length-1)`` into a new cache at ``folder``, atomically.

    Args:
        folder: final cache folder (must not exist yet; if another process creates it first,
            its cache is kept).
        params: JSON-serialisable parameters, stored in the manifest.
        length: number of samples.
        load_sample: uncached sample reader; every sample must have the same tensor shapes.
    """
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f"{folder.name}.tmp-", dir=folder.parent))
    try:
        arrays: Dict[str, np.ndarray] = {}
        metas = []
        for i in tqdm(range(length), desc=f"caching {folder.name}", unit="sample"):
            sample = load_sample(i)
            for key, tensor in sample.items():
                if key in (META, VALID):
                    continue
                if key not in arrays:
                    arrays[key] = np.lib.format.open_memmap(
                        tmp / f"{key}.npy", mode="w+", dtype=tensor.numpy().dtype,
                        shape=(length, *tensor.shape))
                if tuple(tensor.shape) != arrays[key].shape[1:]:
                    raise ValueError(
                        f"cannot cache {key} of shape {tuple(tensor.shape)} for {sample[META]}: "
                        f"earlier samples have {arrays[key].shape[1:]}")
                arrays[key][i] = tensor.numpy()
            metas.append(sample[META])
        manifest = {"version": CACHE_FORMAT_VERSION, "params": params, "length": length,
                    "arrays": {k: {"shape": list(a.shape), "dtype": str(a.dtype)}
                               for k, a in arrays.items()}}
        for array in arrays.values():
            array.flush()
        del arrays
        (tmp / META_FILE).write_text(json.dumps(metas))
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1))
        tmp.chmod(0o755)   # mkdtemp makes it private; a cache is as readable as its data
        try:
            os.rename(tmp, folder)
        except OSError:
            if not (folder / MANIFEST).is_file():   # not a concurrent build that finished first
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def open_or_build(cache_dir: Union[str, "os.PathLike[str]"], name: str, params: Mapping[str, Any],
                  length: int, load_sample: Callable[[int], Sample]) -> SampleCache:
    """Open the cache for ``params`` under ``cache_dir``, building it first when absent.

    Args:
        cache_dir: parent folder of all caches.
        name: readable prefix of the cache folder (e.g. ``v2-train``).
        params: every parameter that shapes the samples (JSON-serialisable).
        length: number of samples.
        load_sample: uncached sample reader, called once per sample while building.

    Returns:
        the opened cache.
    """
    folder = cache_folder(cache_dir, name, params)
    if not (folder / MANIFEST).is_file():
        build_cache(folder, params, length, load_sample)
    cache = SampleCache(folder)
    stored = cache.manifest
    if (stored["version"] != CACHE_FORMAT_VERSION or stored["length"] != length
            or stored["params"] != json.loads(json.dumps(params))):
        raise DataError(folder / MANIFEST, "cache does not match its key; delete the folder")
    return cache
