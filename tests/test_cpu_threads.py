"""Thread count from the cores other processes leave free (issue 32): the policy, the decisions, and the
results not depending on the thread count (calibration bit for bit, so that lowering the count mid-job changes
only the time)."""
import pytest
import torch
from transformers import AutoModel

from fair_calib_hf import FairCalibConfig, cpu_threads
from fair_calib_hf.calibration.transforms import kron_apply_gemms

from conftest import CALIB_TEXTS


@pytest.fixture
def two_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


def test_threads_for():
    assert cpu_threads.threads_for(2.0, 2) == 2
    assert cpu_threads.threads_for(1.0, 2) == 1  # a neighbour on one of two cores
    assert cpu_threads.threads_for(0.2, 2) == 1  # never below 1
    assert cpu_threads.threads_for(7.6, 4) == 4  # never above the count the job started with
    assert cpu_threads.threads_for(2.6, 8) == 3


def test_policy_from_environment(monkeypatch):
    monkeypatch.setattr(cpu_threads, "_policy", None)
    monkeypatch.setenv("FAIR_CALIB_THREADS", "fixed")
    assert cpu_threads.policy() == "fixed"
    monkeypatch.setenv("FAIR_CALIB_THREADS", "sometimes")
    with pytest.raises(ValueError, match="FAIR_CALIB_THREADS='sometimes'.*adaptive, fixed"):
        cpu_threads.policy()
    monkeypatch.delenv("FAIR_CALIB_THREADS")
    assert cpu_threads.policy() == "adaptive"
    with pytest.raises(ValueError, match="set_policy"):
        cpu_threads.set_policy("auto")


class FakeLoad:
    """Stands in for :class:`CpuLoad`: others' cores from a list, one value per decision."""

    def __init__(self, others):
        self.others, self.cpus = list(others), [0, 1]

    def elapsed(self):
        return 10.0

    def sample(self):
        return self.others.pop(0)


@pytest.fixture
def fake_load(monkeypatch):
    """Install a :class:`FakeLoad`; returns a function that sets its values."""
    monkeypatch.setattr(cpu_threads, "_policy", "adaptive")
    monkeypatch.setattr(cpu_threads, "decisions", [])
    monkeypatch.setattr(cpu_threads, "_last_choice", None)

    def install(others):
        monkeypatch.setattr(cpu_threads, "_load", FakeLoad(others))
    return install


def test_rebalance_follows_the_free_cores_and_restores(fake_load, two_threads):
    fake_load([1.9, 1.3, 1.3, 0.1])
    assert cpu_threads.rebalance() == 2  # outside a job: nothing changes
    with cpu_threads.adaptive_threads():  # entry decides: a 2-thread neighbour
        assert torch.get_num_threads() == 1
        assert cpu_threads.rebalance() == 1
        with cpu_threads.adaptive_threads():  # nested: the same job (its entry decides once more)
            assert torch.get_num_threads() == 1
        assert cpu_threads.rebalance() == 2 and torch.get_num_threads() == 2  # the neighbour stopped
        torch.set_num_threads(1)
    assert torch.get_num_threads() == 2  # the count at entry, restored
    assert [t for _, t in cpu_threads.decisions] == [1, 1, 1, 2]


def test_decision_carries_over_to_the_next_job(fake_load, two_threads, monkeypatch):
    fake_load([1.9])
    with cpu_threads.adaptive_threads():
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == 2
    monkeypatch.setattr(FakeLoad, "elapsed", lambda self: 0.0)  # too soon to decide again
    with cpu_threads.adaptive_threads():  # a short job: starts at the last choice
        assert torch.get_num_threads() == 1 and cpu_threads.rebalance() == 1
    assert torch.get_num_threads() == 2


def test_bad_policy_refused_without_breaking_later_jobs(fake_load, two_threads, monkeypatch):
    """A bad $FAIR_CALIB_THREADS is refused at job entry, and the next job (variable fixed) still adapts."""
    fake_load([1.9])
    monkeypatch.setattr(cpu_threads, "_policy", None)
    monkeypatch.setenv("FAIR_CALIB_THREADS", "sometimes")
    with pytest.raises(ValueError, match="FAIR_CALIB_THREADS"):
        with cpu_threads.adaptive_threads():
            pass
    monkeypatch.setenv("FAIR_CALIB_THREADS", "adaptive")
    with cpu_threads.adaptive_threads():
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == 2


def test_fixed_policy_never_changes_the_count(fake_load, monkeypatch, two_threads):
    fake_load([2.0])
    monkeypatch.setattr(cpu_threads, "_policy", "fixed")
    with cpu_threads.adaptive_threads():
        assert cpu_threads.rebalance() == 2
    assert torch.get_num_threads() == 2


def test_cpu_load_reads_this_machine():
    load = cpu_threads.CpuLoad()
    x = torch.randn(256, 256)
    for _ in range(50):
        x = torch.tanh(x @ x)  # this process's own work is not counted as others'
    others = load.sample()
    assert 0.0 <= others <= len(load.cpus)


def test_single_threaded_restores(two_threads):
    with cpu_threads.single_threaded():
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == 2


def test_kron_gradients_same_bits_at_any_thread_count(two_threads):
    """The factor gradients are GEMMs with a [b, b] output and an inner dimension of rows × a, which MKL splits
    across threads; they must not depend on the thread count."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(512, 8, 64, generator=gen)  # rows·a = 4096 inner dimension for ∂right
    left = torch.randn(8, 8, generator=gen)
    right = torch.randn(64, 64, generator=gen)
    grads = []
    for threads in (1, 2):
        torch.set_num_threads(threads)
        l, r, xi = (t.clone().requires_grad_() for t in (left, right, x))
        kron_apply_gemms(xi.reshape(512, -1), l, r).pow(2).sum().backward()
        grads.append((xi.grad, l.grad, r.grad))
    for g1, g2 in zip(*grads):
        assert torch.equal(g1, g2)


@pytest.mark.parametrize("kind", ["llada", "dream"])
def test_calibration_same_bits_at_any_thread_count(tiny_dirs, kind, monkeypatch, two_threads):
    """FAIR-Calib at 1 thread, at 2, and with the count switching between 1 and 2 at every step boundary (what
    the adaptive policy may do beside a neighbour): the same packed checkpoint, bit for bit."""
    cfg = dict(method="fair_calib", calibration_dataset=CALIB_TEXTS * 4, num_samples=8, seq_len=64, epochs=2,
               batch_size=4, n_probe=4)
    states = []
    for threads in (1, 2, "switching"):
        torch.set_num_threads(2 if threads == "switching" else threads)
        if threads == "switching":
            flip = iter(range(10 ** 6))
            monkeypatch.setattr(cpu_threads, "rebalance",
                                lambda: torch.set_num_threads(1 + next(flip) % 2) or torch.get_num_threads())
        model = AutoModel.from_pretrained(tiny_dirs[kind], trust_remote_code=True,
                                          quantization_config=FairCalibConfig(**cfg))
        states.append(model.state_dict())
    for other in states[1:]:
        assert other.keys() == states[0].keys()
        assert [k for k in other if not torch.equal(other[k], states[0][k])] == []


@pytest.mark.parametrize("kind", ["llada", "dream"])
def test_decoding_same_at_any_thread_count(tiny_dirs, kind, input_ids, two_threads):
    """A packed W4A4 model decodes the same tokens and records the same per-step logits statistics at 1 and 2
    threads (the integer kernels are exact; the float parts run row-parallel)."""
    from fair_calib_hf.decoding.samplers import DecodeConfig, diffusion_generate

    model = AutoModel.from_pretrained(tiny_dirs[kind], trust_remote_code=True,
                                      quantization_config=FairCalibConfig(method="rtn")).eval()
    results = []
    for threads in (1, 2):
        torch.set_num_threads(threads)
        res = diffusion_generate(model, input_ids[:, :6], config=DecodeConfig(gen_length=16, steps=8, record=True))
        results.append(res)
    a, b = results
    assert torch.equal(a.sequences, b.sequences)
    assert torch.equal(a.trajectory.commit_step, b.trajectory.commit_step)
    assert torch.equal(a.trajectory.prob, b.trajectory.prob)
