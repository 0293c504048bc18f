"""Test set-up shared by every test module.

* ``import kernels`` first: on a machine without CUDA it switches Triton to its interpreter before any kernel
  module defines a ``@triton.jit`` function.
* ``@pytest.mark.gpu`` tests are skipped without CUDA.
* hypothesis: a bounded profile (few examples, no deadline: interpreted kernels are slow and first calls compile).
* ``--tensor-core-reads`` (CPU): the interpreter reads "tf32" dot operands as Hopper's tensor cores do and rounds
  bf16 casts like the GPU (``tests.test_dot.tensor_core_reads``), so the half-precision tests see the GPU's numerics
  (wkv6's bf16 errors then match the H200's to four digits).
* one torch thread for the whole session (``one_thread``): the tensors are tiny, and oversubscribed threads on a
  shared 2-core machine run torch-bound tests up to ~50x slower (tests/test_step.py: 16-45 s with the default
  threads on a loaded machine, 6 s with one).
"""
import pytest
import torch

import kernels  # noqa: F401  (sets TRITON_INTERPRET=1 when CUDA is absent)

try:
    from hypothesis import HealthCheck, settings

    settings.register_profile("lab", max_examples=8, deadline=None, derandomize=False,
                              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    settings.load_profile("lab")
except ImportError:  # pragma: no cover
    pass

CUDA = torch.cuda.is_available()


def pytest_collection_modifyitems(config, items):
    if CUDA:
        return
    skip = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


def pytest_addoption(parser):
    parser.addoption("--tensor-core-reads", action="store_true",
                     help="CPU interpreter: read 'tf32' dot operands truncated as the tensor cores do and round bf16 "
                          "casts to nearest as the GPU does (the GPU's half-precision numerics)")


@pytest.fixture(scope="session", autouse=True)
def gpu_numerics(request):
    """The whole session under ``tensor_core_reads`` when ``--tensor-core-reads`` is given (and CUDA is absent)."""
    if CUDA or not request.config.getoption("--tensor-core-reads"):
        yield
        return
    from tests.test_dot import tensor_core_reads
    with tensor_core_reads():
        yield


@pytest.fixture
def device():
    return torch.device("cuda" if CUDA else "cpu")


@pytest.fixture(scope="session", autouse=True)
def one_thread():
    """One torch thread for every test (tiny tensors; see the module docstring); the old count restored at the
    end."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)
