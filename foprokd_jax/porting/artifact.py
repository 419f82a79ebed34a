"""Teacher artifacts: Flax variables as a ``.npz`` plus a JSON sidecar with a sha256, no torch needed.

Layout:

  teachers/moco_r50.npz        flattened variables, keys like 'params/layer1_0/conv1/kernel'
  teachers/moco_r50.npz.json   {'sha256', 'arch', 'feature_dim', 'source', 'format_version', ...}

Both files are first written to temporary names in the destination directory and then moved into
place with ``os.replace`` (atomic on POSIX), so a crash never leaves a half-written artifact behind.
Loading re-hashes the ``.npz`` and refuses a file whose digest differs from the sidecar's.
"""

import hashlib
import json
import os
import tempfile
from typing import Any, Dict, Mapping, Optional, Tuple

import flax
import numpy as np
from clu import parameter_overview

FORMAT_VERSION = 1
_KEY_SEPARATOR = "/"
_HASH_CHUNK_BYTES = 1 << 20


def sha256_file(path: str) -> str:
    """Hex sha256 of a file, read in chunks so multi-GB checkpoints do not need to fit in memory."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(_HASH_CHUNK_BYTES), b""):
            digest.update(chunk)
    return digest.hexdigest()


def sidecar_path(path: str) -> str:
    return path + ".json"


def _flatten(variables: Mapping[str, Any]) -> Dict[str, np.ndarray]:
    flat = flax.traverse_util.flatten_dict(flax.core.unfreeze(variables))
    out = {}
    for path, leaf in flat.items():
        names = [str(name) for name in path]
        if any(_KEY_SEPARATOR in name for name in names):
            raise ValueError(f"variable name contains '{_KEY_SEPARATOR}': {names}")
        out[_KEY_SEPARATOR.join(names)] = np.asarray(leaf)
    return out


def _temp_path_beside(path: str, suffix: str) -> str:
    directory = os.path.dirname(os.path.abspath(path))
    handle, temp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=suffix, dir=directory)
    os.close(handle)
    # mkstemp creates the file 0600; give the artifact the permissions a plain open() would.
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(temp, 0o666 & ~umask)
    return temp


def save_artifact(path: str, variables: Mapping[str, Any], meta: Mapping[str, Any]) -> Dict[str, Any]:
    """Write ``variables`` to ``path`` (npz) and the sidecar ``path + '.json'``; return the sidecar dict.

    ``meta`` must contain 'arch'; 'feature_dim' and 'source' default to None. Other entries are
    stored as given and must be JSON-serialisable.
    """
    if "arch" not in meta:
        raise ValueError("artifact meta needs an 'arch' entry")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    arrays = _flatten(variables)

    npz_temp = _temp_path_beside(path, ".npz.tmp")
    json_temp = _temp_path_beside(path, ".json.tmp")
    try:
        # Writing through a file handle stops numpy from appending its own '.npz' to the name.
        with open(npz_temp, "wb") as handle:
            np.savez(handle, **arrays)
            handle.flush()
            os.fsync(handle.fileno())
        sidecar = {
            "feature_dim": None,
            "source": None,
            **dict(meta),
            "sha256": sha256_file(npz_temp),
            "format_version": FORMAT_VERSION,
        }
        with open(json_temp, "w", encoding="utf-8") as handle:
            json.dump(sidecar, handle, indent=2, sort_keys=True)
            handle.write("\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(npz_temp, path)
        os.replace(json_temp, sidecar_path(path))
    finally:
        for temp in (npz_temp, json_temp):
            if os.path.exists(temp):
                os.remove(temp)
    return sidecar


def load_artifact(path: str, expected_arch: Optional[str] = None) -> Tuple[Dict[str, Any], Dict[str, Any]]:
    """Load ``(variables, meta)`` after checking the sidecar, the sha256 and (optionally) the arch."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"teacher artifact not found: {path} (create it with launch/convert_teacher.py)")
    meta_path = sidecar_path(path)
    if not os.path.isfile(meta_path):
        raise FileNotFoundError(
            f"sidecar {meta_path} of teacher artifact {path} is missing; re-run launch/convert_teacher.py"
        )
    with open(meta_path, "r", encoding="utf-8") as handle:
        meta = json.load(handle)
    if meta.get("format_version") != FORMAT_VERSION:
        raise ValueError(
            f"artifact {path} has format_version {meta.get('format_version')!r}; "
            f"this code reads version {FORMAT_VERSION}"
        )

    actual = sha256_file(path)
    if actual != meta.get("sha256"):
        raise ValueError(
            f"artifact {path} is corrupt or was modified: sha256 {actual} != "
            f"{meta.get('sha256')} recorded in {meta_path}"
        )
    if expected_arch is not None and meta.get("arch") != expected_arch:
        raise ValueError(f"artifact {path} holds a {meta.get('arch')!r} but {expected_arch!r} was expected")

    with np.load(path, allow_pickle=False) as archive:
        flat = {tuple(key.split(_KEY_SEPARATOR)): archive[key] for key in archive.files}
    return flax.traverse_util.unflatten_dict(flat), meta


def count_parameters(variables) -> int:
    """Number of trainable parameters (the 'params' collection only, as torch counts them)."""
    return int(parameter_overview.count_parameters(variables["params"]))
