"""Process-wide memory settings for the long loops of both levels."""

from __future__ import annotations


def keep_freed_memory() -> bool:
    """Let glibc keep freed large arrays for reuse instead of handing them back to the kernel.

    Extracting an image, or a training step, allocates and frees the same few arrays of tens of
    MB again and again. By default glibc maps each one afresh and unmaps it when freed, so the
    kernel zeroes and faults in thousands of pages every time: a third of the resampling's time,
    and seconds of system time per epoch. With these thresholds a process reuses its peak
    instead (the memory it holds stays at that peak). One arena for all threads: a thread's own
    arena cannot hold a 200 MB batch, which would be mapped afresh every time again. Returns
    False where malloc is not glibc's.
    """
    import ctypes

    try:
        libc = ctypes.CDLL("libc.so.6")
        m_trim_threshold, m_mmap_threshold, m_arena_max = -1, -3, -8
        return bool(libc.mallopt(m_trim_threshold, 512 << 20)
                    and libc.mallopt(m_mmap_threshold, 256 << 20)
                    and libc.mallopt(m_arena_max, 1))
    except (OSError, AttributeError):
        return False


def release_freed_memory() -> bool:
    """Give back to the system what is free now (glibc's ``malloc_trim``), e.g. the tables of
    a stage that is over, before a loop whose own buffers :func:`keep_freed_memory` keeps."""
    import ctypes

    try:
        return bool(ctypes.CDLL("libc.so.6").malloc_trim(0))
    except (OSError, AttributeError):
        return False


def skip_hugepage_hints() -> bool:
    """Stop numpy from asking for transparent huge pages for its big arrays (``madvise`` on
    every allocation of 4 MB or more, by default on Linux).

    A loop whose buffers :func:`keep_freed_memory` reuses gains nothing from them: the
    kernels run at the same speed on 4 KB pages (measured on the resampling, whose oblique
    reads would feel a TLB), while each huge page is zeroed whole at its first touch, or
    waits on compaction where the machine's ``defrag`` setting is ``madvise`` and free huge
    pages are short; the hint also stays on the heap after the array is freed. At the
    participant level the first touches come with the first images of every lane, and cost
    about a tenth of a short run. Returns False where numpy has no such switch.
    """
    import numpy as np

    for module in ("_core", "core"):  # numpy 2, numpy 1
        switch = getattr(getattr(getattr(np, module, None), "multiarray", None),
                         "_set_madvise_hugepage", None)
        if switch is not None:
            switch(False)
            return True
    return False
