"""The store: atomic files, append-only records, ids that hash the whole configuration."""

import json
import multiprocessing
import sqlite3
import threading
import time

import pytest
import torch

from robustbench_karp.store import (
    CheckpointError,
    ResultsStore,
    StoreLocked,
    config_hash,
    load_checkpoint,
    portable_path,
    resolve_path,
    save_checkpoint,
)
from robustbench_karp.store.records import RECORD_SCHEMA  # toy records in this version's schema: read as written


def test_an_interrupted_checkpoint_write_leaves_the_old_file_and_no_debris(tmp_path, monkeypatch):
    path = tmp_path / "model.pt"
    save_checkpoint(path, {"state_dict": {"w": torch.ones(3)}})
    real_save = torch.save

    def dies_halfway(obj, f, *args, **kwargs):
        f.write(b"PK\x03\x04 partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", dies_halfway)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(path, {"state_dict": {"w": torch.zeros(3)}})
    monkeypatch.setattr(torch, "save", real_save)
    assert torch.equal(load_checkpoint(path)["state_dict"]["w"], torch.ones(3))
    assert [p.name for p in tmp_path.iterdir()] == ["model.pt"]


def test_checkpoints_never_run_code_and_errors_name_the_file(tmp_path):
    missing = tmp_path / "missing.pt"
    with pytest.raises(CheckpointError, match=str(missing)):
        load_checkpoint(missing)
    not_a_dict = tmp_path / "list.pt"
    torch.save([torch.ones(1)], not_a_dict)
    with pytest.raises(CheckpointError, match="not a state dict"):
        load_checkpoint(not_a_dict)


def _append(path, i):
    ResultsStore(path).append({"id": f"r{i}", "schema": RECORD_SCHEMA, "created_utc": "now", "value": i})


@pytest.mark.slow
def test_concurrent_appends_all_land(tmp_path):
    path = tmp_path / "results.sqlite"
    ResultsStore(path)
    with multiprocessing.get_context("spawn").Pool(4) as pool:
        pool.starmap(_append, [(path, i) for i in range(16)])
    assert sorted(r["value"] for r in ResultsStore(path).records()) == list(range(16))


def _open_then_read(path, barrier, errors):
    barrier.wait()
    try:
        ResultsStore(path).records()
    except Exception as e:  # noqa: BLE001 - reported to the parent, which asserts there were none
        errors.put(repr(e))


def test_processes_opening_a_new_database_at_once_all_succeed(tmp_path):
    """torchrun's ranks open a fresh KARP_HOME together; the switch to WAL must not fail one of them."""
    ctx = multiprocessing.get_context("fork")
    errors = ctx.Queue()
    for trial in range(20):  # without retrying the schema setup, about half of these trials failed
        path, barrier = tmp_path / f"results-{trial}.sqlite", ctx.Barrier(8)
        procs = [ctx.Process(target=_open_then_read, args=(path, barrier, errors)) for _ in range(8)]
        for p in procs:
            p.start()
        for p in procs:
            p.join(timeout=120)
        assert [p.exitcode for p in procs] == [0] * 8
    assert errors.empty(), errors.get()


def test_records_are_append_only_and_latest_wins(tmp_path):
    store = ResultsStore(tmp_path / "r.sqlite")
    store.append({"id": "a", "schema": RECORD_SCHEMA, "created_utc": "1", "v": 1})
    store.append({"id": "a", "schema": RECORD_SCHEMA, "created_utc": "2", "v": 2})
    assert [r["v"] for r in store.records()] == [1, 2] and store.get("a")["v"] == 2 and store.get("b") is None


def test_config_hash_is_stable_and_order_free():
    assert config_hash({"a": 1, "b": [1, 2]}) == config_hash({"b": [1, 2], "a": 1})
    assert config_hash({"a": 1}) != config_hash({"a": 2}) and len(config_hash({})) == 16


def test_store_paths_are_portable(karp_home):
    inside = karp_home / "checkpoints" / "x.pt"
    assert portable_path(inside) == "checkpoints/x.pt" and resolve_path("checkpoints/x.pt") == karp_home / "checkpoints/x.pt"
    # Outside the store a record keeps the file's name only, and a path from a record never leads out of the store.
    assert portable_path("/elsewhere/y.pt") == "y.pt" and resolve_path("/elsewhere/y.pt") == karp_home / "y.pt"
    assert resolve_path("../../etc/passwd") == karp_home / "passwd"


def _hold_write_lock(path):
    """Another connection inside an exclusive transaction: every writer gets 'database is locked' until COMMIT."""
    locker = sqlite3.connect(path, isolation_level=None)
    locker.execute("BEGIN EXCLUSIVE")
    return locker


def test_an_append_waits_out_a_locked_database_and_lands(tmp_path, monkeypatch):
    monkeypatch.setattr(ResultsStore, "BUSY_TIMEOUT_SECONDS", 0.01)  # SQLite gives up at once: the retries must wait
    path, record = tmp_path / "r.sqlite", {"id": "a", "schema": RECORD_SCHEMA, "created_utc": "2025-01-01T10:00:00+00:00", "v": 1}
    store = ResultsStore(path)
    attempts, real_insert = [], ResultsStore._insert
    monkeypatch.setattr(ResultsStore, "_insert", lambda self, *a: attempts.append(1) or real_insert(self, *a))
    locker = _hold_write_lock(path)
    thread = threading.Thread(target=store.append, args=(record,))
    thread.start()
    deadline = time.monotonic() + 300
    while len(attempts) < 4 and thread.is_alive() and time.monotonic() < deadline:  # three attempts met the lock
        time.sleep(0.01)
    assert thread.is_alive() and list(store.pending_dir.iterdir())  # still waiting; the record is safe on disk
    locker.execute("COMMIT")
    thread.join(timeout=1800)
    assert ResultsStore(path).records() == [record] and not list(store.pending_dir.iterdir())


def test_a_record_the_store_could_not_take_is_added_by_the_next_store_exactly_once(tmp_path, monkeypatch):
    monkeypatch.setattr(ResultsStore, "BUSY_TIMEOUT_SECONDS", 0.01)
    monkeypatch.setattr(ResultsStore, "RETRY_SECONDS", 0.2)
    path, record = tmp_path / "r.sqlite", {"id": "a", "schema": RECORD_SCHEMA, "created_utc": "2025-01-01T10:00:00+00:00", "v": 1}
    store = ResultsStore(path)
    locker = _hold_write_lock(path)
    with pytest.raises(StoreLocked, match="stayed locked.*the record is kept in"):
        store.append(record)
    (pending,) = store.pending_dir.iterdir()
    assert json.loads(pending.read_text()) == record and ":" not in pending.name
    locker.execute("COMMIT")
    assert ResultsStore(path).records() == [record] and not pending.exists()
    # Killed after the commit, before removing its pending file: the file goes, the row is not repeated.
    pending.write_text(json.dumps(record, sort_keys=True))
    assert ResultsStore(path).records() == [record] and not pending.exists()


def test_an_append_interrupted_before_its_commit_is_added_by_the_next_store(tmp_path, monkeypatch):
    path, record = tmp_path / "r.sqlite", {"id": "b", "schema": RECORD_SCHEMA, "created_utc": "now", "v": 2}
    store = ResultsStore(path)

    def killed(self, *args):
        raise KeyboardInterrupt

    monkeypatch.setattr(ResultsStore, "_insert", killed)
    with pytest.raises(KeyboardInterrupt):
        store.append(record)
    monkeypatch.undo()
    assert store.records() == [] and ResultsStore(path).records() == [record]
    assert store.flush_pending() == 0 and store.records() == [record]


def test_records_of_every_schema_are_migrated_on_read_and_keep_their_ids(tmp_path):
    """The EvalConfig is stored once, under "config"; older records' top-level copies are dropped on read."""
    from robustbench_karp.evaluation.evalconfig import EvalConfig
    from robustbench_karp.store.records import CONFIG_COPIES, migrate

    config = EvalConfig(model="smallcnn", dataset="mnist", defense={"name": "pgd-at", "steps": 5}, weights="w" * 64,
                        defense_weights=None, norm="linf", eps=0.3, n_examples=2, seed=0, batch_size=500,
                        attacks=({"name": "fgsm"},), rng="per-batch/1").to_dict()
    copies = {"model": "smallcnn", "dataset": "mnist", "defense": "pgd-at", "defense_config": config["defense"],
              "norm": "linf", "eps": 0.3, "n_examples": 2, "seed": 0, "batch_size": 500, "attacks": config["attacks"],
              "protocol": None, "weights_sha256": "w" * 64, "defense_weights_sha256": None, "model_source": None}
    schema2 = {"id": config_hash(config), "created_utc": "1", "clean_accuracy": 1.0, "robust_accuracy": 0.5,
               "config": config, **copies}
    legacy_config = {k: copies[k] for k in ("model", "dataset", "defense_config", "norm", "eps", "n_examples", "seed",
                                            "batch_size", "attacks")} | {"checkpoint_sha256": "c" * 64}
    schema1 = {"id": config_hash(legacy_config), "created_utc": "2", "config": legacy_config, **copies,
               "weights_sha256": None, "checkpoint_sha256": "c" * 64}
    store = ResultsStore(tmp_path / "r.sqlite")
    for record in (schema2, schema1):
        store.append(record)
    new2, new1 = store.records()
    assert new2["id"] == schema2["id"] == config_hash(new2["config"]) and new2["config"] == config  # the id stays its hash
    assert new1["id"] == schema1["id"] and new1["config"]["weights"] == "file:" + "c" * 64
    assert new1["config"]["schema"] == 1 and new1["config"]["defense"] == copies["defense_config"]
    for new in (new1, new2):
        assert new["schema"] == 3 and not set(CONFIG_COPIES) & set(new) and migrate(new) == new  # idempotent
    assert store.get(schema2["id"]) == new2
    # A hand-built record without options keeps its defense's bare name: its entry id hashed no options.
    bare = migrate({"id": "x", "model": "m", "dataset": "d", "defense": "trades", "norm": "linf", "eps": 0, "seed": 1})
    assert bare["config"]["defense"] == "trades" and bare["config"]["seed"] == 1 and "seed" not in bare
