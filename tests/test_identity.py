"""Identity: one EvalConfig is the record id; a model is its weights; exact reproduce of sweeps and randomized defenses."""

import shutil

import pytest
import torch

from robustbench_karp.api import load_model
from robustbench_karp.cli import main
from robustbench_karp.store import ResultsStore
from robustbench_karp.store.identity import weights_sha256

EVAL = ["evaluate", "--model", "smallcnn", "--attack", "fgsm", "--attack", "pgd", "--attack-arg", "steps=5",
        "--n-examples", "60", "--device", "cpu", "--json"]
GAN = ["--defense", "defense-gan", "--defense-arg", "epochs=1", "--defense-arg", "train_size=256",
       "--defense-arg", "latent_dim=16", "--defense-arg", "steps=5", "--defense-arg", "restarts=2"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    home = tmp_path_factory.mktemp("identity-home")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("KARP_HOME", str(home))
        load_model("smallcnn", dataset="digits", defense="standard", device="cpu")
    return home


@pytest.fixture
def home(trained, tmp_path, monkeypatch):
    h = tmp_path / "home"
    shutil.copytree(trained / "checkpoints", h / "checkpoints")
    monkeypatch.setenv("KARP_HOME", str(h))
    return h


def test_weights_hash_is_canonical():
    a = {"b": torch.arange(3.0), "a": torch.zeros(2, dtype=torch.int64)}
    assert weights_sha256(a) == weights_sha256(dict(reversed(list(a.items()))))  # key order does not count
    for changed in ({**a, "b": torch.tensor([0.0, 1.0, 2.5])}, {**a, "b": torch.arange(3.0).double()},
                    {**a, "b": torch.arange(3.0).view(3, 1)}, {"c": a["b"], "a": a["a"]}):
        assert weights_sha256(changed) != weights_sha256(a)  # bytes, dtype, shape and names all count


def test_two_fresh_stores_give_the_same_id_and_a_resaved_checkpoint_keeps_it(home, tmp_path, capsys, monkeypatch):
    assert main(EVAL) == 0
    first = ResultsStore().records()[-1]
    assert first["conditions"]["threads"] == torch.get_num_threads() and first["config"]["schema"] == 2
    # The same weights in a file with other training metadata (wall time, history): same id, same numbers.
    (ckpt,) = [p for p in (home / "checkpoints").glob("*.pt") if not p.name.endswith(".last.pt")]
    payload = torch.load(ckpt, weights_only=True)
    other = tmp_path / "other-home"
    (other / "checkpoints").mkdir(parents=True)
    torch.save({**payload, "train_seconds": 1234.5, "history": []}, other / "checkpoints" / ckpt.name)
    monkeypatch.setenv("KARP_HOME", str(other))
    assert main(EVAL) == 0
    second = ResultsStore().records()[-1]
    assert second["checkpoint_sha256"] != first["checkpoint_sha256"]  # the files differ...
    assert (second["id"], second["robust_mask"], second["clean_mask"]) == (first["id"], first["robust_mask"],
                                                                           first["clean_mask"])  # ...the evaluation not


def test_a_checkpoint_of_another_recipe_is_never_substituted(home, capsys):
    (ckpt,) = [p for p in (home / "checkpoints").glob("*.pt") if not p.name.endswith(".last.pt")]
    ckpt.rename(ckpt.with_name(ckpt.name.replace("-s0-", "-s0-x").replace("fp32", "fp32x")))  # another recipe's file
    from robustbench_karp.training.checkpoints import find_checkpoint
    from robustbench_karp.training.config import make_train_config

    assert find_checkpoint(make_train_config("smallcnn", "digits", "standard"), torch.device("cpu")) is None


def test_second_eps_of_a_sweep_reproduces_exactly(home, capsys):
    assert main([*EVAL, "--eps", "0.05,0.1"]) == 0
    second = ResultsStore().records()[-1]
    assert second["config"]["eps"] == 0.1
    capsys.readouterr()
    assert main(["reproduce", second["id"]]) == 0
    out = capsys.readouterr().out
    assert "MISMATCH" not in out and "robust_mask" in out and out.strip().endswith("reproduced")


@pytest.mark.slow
def test_randomized_defense_with_options_reproduces_exactly_and_each_cell_starts_fresh(home, capsys):
    # Defense-GAN draws its restarts from a generator inside the model: a sweep must not carry it over.
    assert main([*EVAL, *GAN, "--n-examples", "20", "--eps", "0.05,0.1"]) == 0
    swept = ResultsStore().records()[-1]
    assert swept["config"]["defense"]["steps"] == 5 and swept["config"]["defense_weights"]
    assert main([*EVAL, *GAN, "--n-examples", "20", "--eps", "0.1"]) == 0
    alone = ResultsStore().records()[-1]
    assert (alone["id"], alone["clean_mask"], alone["robust_mask"]) == (swept["id"], swept["clean_mask"],
                                                                        swept["robust_mask"])
    capsys.readouterr()
    assert main(["reproduce", swept["id"]]) == 0
    out = capsys.readouterr().out
    assert "MISMATCH" not in out and out.strip().endswith("reproduced")


def test_under_a_protocol_a_purifiers_adaptive_attacks_run_first_and_reproduce_keeps_the_order(home):
    """AutoAttack's 5000 Square queries are spent only on the points BPDA left: the same worst case, far cheaper."""
    from robustbench_karp.attacks import build_attack
    from robustbench_karp.harness import EvalRequest, plan_evaluation, prepare, requested_attacks

    options = {"epochs": 1, "train_size": 256, "latent_dim": 16, "steps": 5, "restarts": 2}
    req = EvalRequest(model="smallcnn", dataset="digits", defense="defense-gan", defense_options=options,
                      attacks=[build_attack("fgsm")], n_examples=20, device="cpu", protocol="standard/2")
    prepared = prepare(req)
    protocol_order = [a.name for a in plan_evaluation(req, prepared).attacks]
    assert protocol_order == ["transfer-pgd", "bpda-pgd", "autoattack", "fgsm"]
    plain = EvalRequest(**{**req.__dict__, "protocol": None})
    assert [a.name for a in plan_evaluation(plain, prepared).attacks] == ["fgsm", "transfer-pgd", "bpda-pgd"]
    # reproduce passes the recorded attacks, in their order, with the protocol: the order stays
    recorded = plan_evaluation(req, prepared).attacks
    again, label = requested_attacks(EvalRequest(**{**req.__dict__, "attacks": list(recorded)}))
    assert [a.config() for a in again] == [a.config() for a in recorded] and label == "standard/2"


CPUINFO = """processor\t: 0
vendor_id\t: GenuineIntel
cpu family\t: 6
model\t\t: 85
model name\t: Intel(R) Xeon(R) Gold 6148 CPU @ 2.40GHz
stepping\t: 4
cache size\t: 28160 KB
flags\t\t: fpu sse4_2 avx avx2 fma f16c avx512f avx512bw avx512_vnni smep sme bf16

processor\t: 1
vendor_id\t: GenuineIntel
flags\t\t: fpu avx amx_tile
"""


def test_records_name_the_processor_and_the_isa_kernels_dispatch_on():
    from robustbench_karp.store.identity import cpu_conditions, cpu_processor

    processor, isa = cpu_processor(CPUINFO)
    assert processor == "GenuineIntel 6/85/4 Intel(R) Xeon(R) Gold 6148 CPU @ 2.40GHz, cache 28160 KB"
    assert isa == "avx avx2 avx512_vnni avx512bw avx512f f16c fma"  # the first processor's; not fpu, sse, smep
    arm = "processor\t: 0\nBogoMIPS\t: 50.00\nFeatures\t: fp asimd sve sve2 bf16 i8mm crc32\nCPU implementer\t: 0x41\n" \
          "CPU architecture: 8\nCPU variant\t: 0x0\nCPU part\t: 0xd40\nCPU revision\t: 1\n"
    assert cpu_processor(arm) == ("ARM implementer 0x41 part 0xd40 variant 0x0 revision 1", "asimd bf16 i8mm sve sve2")
    here = cpu_conditions()
    assert {"threads", "cpu_capability", "cpu", "cpu_isa", "deterministic_algorithms"} <= set(here)
    assert here["cpu"] and here["threads"] == torch.get_num_threads()


def test_reproduce_says_when_the_processor_differs_and_why_rebuilt_weights_do(home, tmp_path):
    from robustbench_karp.reproduce import check_weights, recorded_threads
    from robustbench_karp.store import CheckpointError
    from robustbench_karp.store.identity import cpu_conditions

    here, before = cpu_conditions(), torch.get_num_threads()
    same = {"device": "cpu", "conditions": {**here, "threads": 1}}
    with recorded_threads(same, torch.device("cpu")) as notes:
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before and notes == ["running with 1 thread(s), as recorded"]
    other = {**here, "cpu": "AuthenticAMD 25/17/1 AMD EPYC 9654, cache 1024 KB", "cpu_isa": here["cpu_isa"] + " avx9"}
    with recorded_threads({"device": "cpu", "conditions": other}, torch.device("cpu")) as notes:
        pass
    assert any(n.startswith("processor differs: recorded AuthenticAMD") for n in notes)
    assert any("vector ISA differs: this machine lacks avx9" in n for n in notes)
    # Weights rebuilt on other hardware: the refusal says that is why they differ.
    (ckpt,) = [p for p in (home / "checkpoints").glob("*.pt") if not p.name.endswith(".last.pt")]
    record = {"id": "r", "config": {"model": "smallcnn", "dataset": "digits", "weights": "0" * 64},
              "train_conditions": {**other, "device": "cpu"}}
    cpu = torch.device("cpu")
    with pytest.raises(CheckpointError, match="rebuilt on other hardware .processor differs: recorded AuthenticAMD"):
        check_weights(record, ckpt, rebuilt_on=cpu)
    for same_hardware in ({**record, "train_conditions": {**here, "device": "cpu"}}, record):
        with pytest.raises(CheckpointError, match=r"not reproducible$"):  # same hardware, or found, not rebuilt
            check_weights(same_hardware, ckpt, rebuilt_on=cpu if same_hardware is not record else None)
    with pytest.raises(CheckpointError, match="rebuilt on cpu where it was trained on cuda$"):
        check_weights({**record, "train_conditions": {**here, "device": "cuda:0"}}, ckpt, rebuilt_on=cpu)
