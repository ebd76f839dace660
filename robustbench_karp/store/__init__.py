"""The store: everything karp-robust keeps under KARP_HOME (default ~/.cache/karp-robust).

    KARP_HOME/results.sqlite          evaluation records (results.py; records.py reads every schema)
    KARP_HOME/checkpoints/            trained models (training/checkpoints.py names them by recipe)
    KARP_HOME/generators/             networks attacks and defenses train for themselves (networks.py)
    KARP_HOME/cache/catalog.json      what the registries hold (robustbench_karp/catalog.py)
    KARP_HOME/data/                   the default data directory

This part owns files, hashes and identities: atomic writes (files.py), checkpoint I/O with
weights_only=True (checkpoint_io.py), the results database (results.py), one record schema and its
migrations (records.py), cross-process locks (locks.py), weights identities and CPU conditions
(identity.py), and the cache of self-trained networks (networks.py).

Layer: it imports only the registry and the standard library (torch inside functions, where a
tensor is read or written), so commands that need no model stay free of torch.
"""

from robustbench_karp.store.checkpoint_io import CheckpointError, load_checkpoint, save_checkpoint, state_dict_in
from robustbench_karp.store.files import (
    atomic_write_bytes,
    atomic_write_text,
    config_hash,
    current_umask,
    file_sha256,
    karp_home,
    keep_copy,
    portable_path,
    resolve_path,
    stored_copy,
)
from robustbench_karp.store.results import ResultsStore, StoreLocked, deleted_ids, read_records

__all__ = ["CheckpointError", "ResultsStore", "StoreLocked", "atomic_write_bytes", "atomic_write_text", "config_hash",
           "current_umask", "deleted_ids", "file_sha256", "karp_home", "keep_copy", "load_checkpoint", "portable_path",
           "read_records", "resolve_path", "save_checkpoint", "state_dict_in", "stored_copy"]
