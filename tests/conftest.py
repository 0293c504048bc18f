"""Test set-up shared by every test module.

* ``import kernels`` first: on a machine without CUDA it switches Triton to its interpreter before any kernel
  module defines a ``@triton.jit`` function.
* ``@pytest.mark.gpu`` tests are skipped without CUDA.
* hypothesis: a bounded profile (few examples, no deadline: interpreted kernels are slow and first calls compile).
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
