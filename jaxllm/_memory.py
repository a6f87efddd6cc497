"""Process-wide glibc ``malloc`` tuning for the CPU training loop (private).

XLA allocates each compiled call's temporary buffer afresh on the CPU; these settings let the
next step reuse it instead of faulting in fresh pages (the measurement is in
``benchmarks/README.md``, "one arena"). :class:`jaxllm.train.Trainer` applies them when it is
built, so importing ``jaxllm`` alone changes nothing in the process.
"""

from __future__ import annotations

import ctypes
import os
import platform

# glibc malloc settings (see keep_freed_memory): blocks up to MMAP_THRESHOLD come from the
# heap rather than from their own mmap, the heap keeps up to TRIM_THRESHOLD of free memory at
# its top instead of handing it back to the operating system, and all threads share one arena.
MMAP_THRESHOLD = 512 * 2**20
TRIM_THRESHOLD = 1024 * 2**20
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD, _M_ARENA_MAX = -1, -3, -8  # mallopt parameters (malloc.h)
_malloc_tuned: bool | None = None


def keep_freed_memory() -> bool:
    """Let glibc's ``malloc`` reuse the memory of XLA's per-call buffers instead of returning
    it to the operating system. Called by :class:`jaxllm.train.Trainer`; calling it again does
    nothing.

    Why: every call of a compiled function on the CPU allocates its temporary buffer afresh
    (45 MB for the train step of ``benchmarks/train_cpu.py``) and frees it at the end. glibc
    serves blocks above 32 MB with a fresh ``mmap`` and unmaps them when they are freed, so
    each step touches 45 MB of new pages: about 12,000 page faults, a quarter of the step's
    time on a 2-core CPU. With higher thresholds the block stays in the heap and the next
    step reuses it. The cost: the process keeps memory it has freed (its resident size does
    not shrink back after a peak).

    Threads: JAX runs CPU computations on worker threads, and glibc gives threads arenas of
    their own, which cannot keep a block above 64 MB and hand freed memory back by other
    rules; which arena served a step depended on what the process had done before (a harmless
    change to model initialisation brought 7,700 faults a step back). So the settings also
    limit malloc to one arena (``M_ARENA_MAX``): threads that have no arena yet then allocate
    from the main heap, where the thresholds above apply, and bigger per-step buffers are
    reused too (batch 32: 125 MB, 34,000 faults and 130 ms a step before, none and 84 ms
    after; see ``benchmarks/README.md``).

    Only glibc (Linux) has these settings; elsewhere, or when the environment variable
    ``JAXLLM_KEEP_FREED_MEMORY=0`` is set, nothing changes. Returns whether the settings are
    in force.
    """
    global _malloc_tuned
    if _malloc_tuned is None:
        _malloc_tuned = False
        wanted = os.environ.get("JAXLLM_KEEP_FREED_MEMORY", "1") != "0"
        if wanted and platform.libc_ver()[0] == "glibc":
            try:
                libc = ctypes.CDLL("libc.so.6")
                _malloc_tuned = bool(libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)
                                     and libc.mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD)
                                     and libc.mallopt(_M_ARENA_MAX, 1))
            except (OSError, AttributeError):
                pass
    return _malloc_tuned


def release_free_memory() -> None:
    """Give the pages of memory that ``malloc`` holds free back to the operating system.

    The complement of :func:`keep_freed_memory`, which stops glibc from doing so on its own:
    the trainer calls this after XLA has compiled something (initialisation, the first
    train and evaluation steps), whose scratch memory would otherwise stay resident for the
    rest of the run (about 150 MB for ``benchmarks/train_cpu.py``). A no-op unless the
    ``keep_freed_memory`` settings are in force.
    """
    if _malloc_tuned:
        try:
            ctypes.CDLL("libc.so.6").malloc_trim(0)
        except (OSError, AttributeError):
            pass
