"""Running time of one method on one image size (Table 4): ``python -m benchmark.run runtime METHOD``.

Timing uses the bare architecture (``weights="init"``): the work a forward pass does does not
depend on the values of the weights. Each measurement warms up first (``warmup`` passes,
which also lets cuDNN and the CPU allocator settle), synchronises the device around every
timed pass and reports the median, minimum and maximum of ``repeats`` passes. ``gflops``
counts the floating-point operations of one pass (per batch) with
``torch.utils.flop_counter`` (convolutions and matrix products; element-wise work is not
counted). ``peak_mem_mb`` is the accelerator's peak allocation on CUDA and the growth of
this process's peak resident set on the CPU (0 when the pass fits in memory already held).

``runtime METHOD`` (:func:`measure_against_naive`) times the path the cells take
(:mod:`benchmark.inference`) and, in the same process, the eager NCHW float32 module.
``compile=True`` goes through :func:`benchmark.inference.compile_for_inference`: TorchInductor with weight freezing,
which folds the weights into the graph and fuses each convolution with the LeakyReLU / ReLU
after it (oneDNN post-ops), so those activations are not read and written again by a separate
element-wise pass. Additions that follow an activation (ResGuideNet's ``g(x) + x0``) stay
separate kernels: Inductor fuses an addition into a convolution only before the activation.

The CLI starts with :func:`prepare_cpu` (denormals flushed to zero, glibc's allocator tuned);
each record names the allocator setting in ``malloc``.
"""
from __future__ import annotations

import platform
import resource
import statistics
import time
from contextlib import nullcontext

import torch

from benchmark.inference import STATIC_SHAPES, choose_path, compile_for_inference
from models.registry import count_parameters, load

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def hardware(device: torch.device) -> str:
    """A short name of the machine that ran: the GPU's name, or the CPU model and thread count."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"{model}, {torch.get_num_threads()} threads"


#: glibc ``mallopt`` parameters (malloc.h) and the values :func:`tune_allocator` sets.
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
MMAP_THRESHOLD = 32 * 2**20      # glibc's largest allowed value on 64-bit machines
TRIM_THRESHOLD = 2**30
_allocator = "default"


def tune_allocator() -> str:
    """Keep freed blocks of up to 32 MiB in the heap instead of returning them to the system.

    By default glibc serves each block over its adaptive mmap threshold (128 KiB up to 32 MiB)
    with a fresh ``mmap`` and unmaps it on free. A 500x500 feature map of 16 channels is 16 MB
    in float32, so every layer of a forward pass got new pages from the kernel and paid a page
    fault on each 4 KiB of them: ResGuideNet's eager float32 pass at 500x500 (2 threads) took
    1.31 s with the default and 0.64 s with this setting. The price is memory: up to
    ``TRIM_THRESHOLD`` of freed heap stays with the process. ``RESGUIDE_MALLOC=default`` (or a
    C library other than glibc) leaves the allocator alone. Returns the setting in effect;
    calling it again changes nothing."""
    global _allocator
    import ctypes
    import ctypes.util
    import os

    if os.environ.get("RESGUIDE_MALLOC", "") == "default" or platform.libc_ver()[0] != "glibc":
        return _allocator
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    if libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) and libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD):
        _allocator = f"glibc mmap_threshold={MMAP_THRESHOLD >> 20}MiB trim_threshold={TRIM_THRESHOLD >> 20}MiB"
    return _allocator


def flush_denormals() -> bool:
    """Flush denormal floats to zero on this CPU, for this thread and the threads it starts later.

    With the authors' JORDER weights on a Rain100L image, the network's feature maps hold
    denormal numbers (below 1.2e-38), which x86 cores process in microcode: the image took 18.7 s
    on 2 threads, and 2.1 s with them flushed, to the same PSNR in every printed digit. The flag
    lives in each thread's MXCSR register: a thread pool that already exists keeps its old
    setting (that image then took 16.7 s), so this must run before the first parallel operation
    (:func:`prepare_cpu`, first thing in the CLI and in ``pytest_configure``). Returns whether the CPU
    supports it."""
    return torch.set_flush_denormal(True)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_passes(fn, repeats: int, warmup: int, sync=lambda: None) -> list[float]:
    """Seconds of each of ``repeats`` calls of ``fn`` after ``warmup`` untimed ones; ``sync`` runs
    before and after every call (device synchronisation), outside the timed span only before."""
    times = []
    for i in range(warmup + repeats):
        sync()
        t0 = time.perf_counter()
        fn()
        sync()
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    return times


def prepare_cpu() -> str:
    """The CPU settings every command (and the test session) starts with, before the first parallel
    operation starts torch's thread pool: :func:`flush_denormals`, then :func:`tune_allocator`,
    whose setting it returns."""
    flush_denormals()
    return tune_allocator()


def measure_against_naive(method: str, size: int = 500, device: str = "cpu", dtype: str = "float32",
                          batch: int = 1, repeats: int = 5, warmup: int = 2, eager: bool = False) -> dict:
    """``runtime METHOD``: the suite's inference path (channels-last, compiled with freezing unless
    ``eager`` or the method never compiles, :data:`benchmark.inference.EAGER_ONLY`) against the same module run eager, NCHW, float32, in one
    process. The record is the fast path's, with ``naive_median_s`` and ``speedup``."""
    path, why = choose_path(method, float("inf"), "eager" if eager else "compiled")
    naive = measure(method, size, device, "float32", batch, repeats, warmup)
    fast = measure(method, size, device, dtype, batch, repeats, warmup, channels_last=True,
                   compile=path == "compiled")
    return {**fast, "path": path, "why": why, "naive_median_s": naive["median_s"],
            "speedup": round(naive["median_s"] / fast["median_s"], 3)}


def _count_gflops(net: torch.nn.Module, x: torch.Tensor, autocast) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with torch.inference_mode(), autocast, counter:
        net(x)
    return counter.get_total_flops() / 1e9


def measure(method: str, size: int = 500, device: str = "cpu", dtype: str = "float32", batch: int = 1,
            repeats: int = 5, warmup: int = 2, seed: int = 0, channels_last: bool = False,
            compile: bool = False) -> dict:
    """Time ``method`` on ``batch`` random ``size`` x ``size`` RGB images; one result dict."""
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    if size < 8 or batch < 1 or repeats < 1 or warmup < 0:
        raise ValueError(f"need size >= 8, batch >= 1, repeats >= 1, warmup >= 0 "
                         f"(got size={size}, batch={batch}, repeats={repeats}, warmup={warmup})")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("--device cuda asked for, but PyTorch sees no CUDA device here")
    net, _ = load(method, "init")
    params = count_parameters(net)
    net = net.to(dev).eval()
    x = torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(seed)).to(dev)
    if channels_last:
        net = net.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    autocast = torch.autocast(dev.type, dtype=DTYPES[dtype]) if dtype != "float32" else nullcontext()
    gflops = _count_gflops(net, x, autocast)
    if compile:  # as a cell compiles it (benchmark.inference.Derainer)
        net = compile_for_inference(net, dynamic=method not in STATIC_SHAPES)

    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
        base = torch.cuda.memory_allocated(dev)
    else:
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with torch.inference_mode(), autocast:
        times = time_passes(lambda: net(x), repeats, warmup, sync=lambda: _sync(dev))
    if dev.type == "cuda":
        peak_mb = (torch.cuda.max_memory_allocated(dev) - base) / 2**20
    else:  # ru_maxrss is in KiB on Linux
        peak_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 1024
    median = statistics.median(times)
    return {
        "method": method, "size": size, "device": dev.type, "dtype": dtype, "batch": batch,
        "channels_last": channels_last, "compile": compile,
        **({"compile_options": {"freezing": True, "dynamic": method not in STATIC_SHAPES}} if compile else {}),
        "median_s": median, "min_s": min(times), "max_s": max(times), "repeats": repeats,
        "images_per_s": batch / median, "threads": torch.get_num_threads(),
        "params": params["trainable"], "gflops": round(gflops, 3), "peak_mem_mb": round(peak_mb, 1),
        "hardware": hardware(dev), "torch": str(torch.__version__), "malloc": _allocator,
    }
