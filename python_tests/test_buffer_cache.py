"""The cache of large CPU output buffers (csrc/ops/cpu/buffer_cache.cpp): reuse, limits, release,
correctness of gradients that live in reused buffers."""
import io
import os
import subprocess
import sys
import textwrap

import pytest
import torch

import kdkernels
from kdkernels import reference
from kdkernels._native import HAS_NATIVE

pytestmark = pytest.mark.skipif(not HAS_NATIVE, reason="native extension not built")

SHAPE = (2, 32, 64, 64)          # 1 MiB per fp32 tensor: the smallest cached size


def _inputs(seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    s = torch.randn(SHAPE, generator=g, dtype=dtype).requires_grad_()
    t = torch.randn(SHAPE, generator=g, dtype=dtype)
    conf = torch.rand(SHAPE[0], *SHAPE[2:], generator=g, dtype=dtype)
    return s, t, conf


def _mse(s, t, conf):
    with kdkernels.use_backend("cpu"):
        return kdkernels.confidence_masked_mse(s, t, conf, threshold=0.3)


def test_freed_gradient_buffer_is_reused_and_released():
    kdkernels.release_cpu_buffers()
    s, t, conf = _inputs()
    _mse(s, t, conf).backward()
    first = s.grad.data_ptr()
    s.grad = None                                   # frees the buffer into the cache
    info = kdkernels.cpu_buffer_cache_info()
    assert info["cached_blocks"] >= 1 and info["cached_bytes"] >= 1 << 20
    hits = info["hits"]
    _mse(s, t, conf).backward()
    assert s.grad.data_ptr() == first               # same mapping, no new page faults
    assert kdkernels.cpu_buffer_cache_info()["hits"] == hits + 1
    s.grad = None
    kdkernels.release_cpu_buffers()
    assert kdkernels.cpu_buffer_cache_info()["cached_bytes"] == 0


def test_live_buffers_are_never_handed_out_twice():
    s1, t1, c1 = _inputs(1)
    s2, t2, c2 = _inputs(2)
    _mse(s1, t1, c1).backward()
    _mse(s2, t2, c2).backward()
    assert s1.grad.data_ptr() != s2.grad.data_ptr()
    for s, t, c in ((s1, t1, c1), (s2, t2, c2)):
        sr = s.detach().double().requires_grad_()
        reference.confidence_masked_mse(sr, t.double(), c.double(), threshold=0.3).backward()
        torch.testing.assert_close(s.grad.double(), sr.grad, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_outputs_in_cached_buffers_behave_like_tensors(dtype):
    s, t, conf = _inputs(3, dtype)
    with kdkernels.use_backend("cpu"):
        out = kdkernels.confidence_masked_mse(s, t, conf, reduction="none")
    assert out.is_contiguous() and out.dtype == dtype and out.shape == SHAPE
    buf = io.BytesIO()
    torch.save(out.detach(), buf)
    buf.seek(0)
    assert torch.equal(torch.load(buf), out.detach())
    out.sum().backward()
    assert torch.isfinite(s.grad).all()
    resized = out.detach().clone().resize_(4, *SHAPE)  # a copy is an ordinary tensor
    assert resized.shape[0] == 4


def test_soft_label_kl_gradient_uses_the_cache():
    kdkernels.release_cpu_buffers()
    g = torch.Generator().manual_seed(0)
    s = torch.randn(4096, 80, generator=g).requires_grad_()   # 1.25 MiB
    t = torch.randn(4096, 80, generator=g)
    with kdkernels.use_backend("cpu"):
        kdkernels.soft_label_kl(s, t, mode="sigmoid").backward()
    misses = kdkernels.cpu_buffer_cache_info()["misses"]
    s.grad = None
    with kdkernels.use_backend("cpu"):
        kdkernels.soft_label_kl(s, t, mode="sigmoid").backward()
    info = kdkernels.cpu_buffer_cache_info()
    assert info["misses"] == misses and info["hits"] >= 1


def _child(code: str, env_value: str):
    env = dict(os.environ, KDKERNELS_CPU_CACHE_MB=env_value)
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=env, capture_output=True,
                          text=True, timeout=120)


CHILD = """
    import torch, kdkernels
    s = torch.randn(2, 32, 64, 64, requires_grad=True)
    t = torch.randn(2, 32, 64, 64)
    with kdkernels.use_backend("cpu"):
        kdkernels.confidence_masked_mse(s, t, torch.rand(2, 64, 64)).backward()
    s.grad = None
    info = kdkernels.cpu_buffer_cache_info()
    print(info["limit_bytes"], info["cached_bytes"])
"""


def test_limit_zero_keeps_nothing():
    proc = _child(CHILD, "0")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["0", "0"]


def test_bad_limit_is_a_clear_error():
    proc = _child(CHILD, "lots")
    assert proc.returncode != 0
    assert "KDKERNELS_CPU_CACHE_MB" in proc.stderr


def _child_loss(q):
    torch.set_num_threads(1)   # as DataLoader workers do: OpenMP's pool does not survive fork()
    s, t, conf = _inputs(5)
    _mse(s, t, conf).backward()
    q.put(float(s.grad.double().square().sum()))


def test_forked_child_can_use_the_cache():
    import multiprocessing as mp
    s, t, conf = _inputs(5)
    _mse(s, t, conf).backward()          # the parent's cache holds a buffer when the child forks
    want = float(s.grad.double().square().sum())
    s.grad = None
    ctx = mp.get_context("fork")
    q = ctx.Queue()
    p = ctx.Process(target=_child_loss, args=(q,))
    p.start()
    got = q.get(timeout=120)
    p.join(timeout=120)
    if p.is_alive():
        p.kill()
    assert p.exitcode == 0 and got == pytest.approx(want, rel=1e-6)
