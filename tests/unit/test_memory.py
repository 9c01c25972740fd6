"""Process-wide memory settings (bidsapp_dl/memory.py)."""

from __future__ import annotations

import platform

import numpy as np

from bidsapp_dl import memory


def test_skip_hugepage_hints_turns_numpys_switch_off():
    multiarray = np._core.multiarray
    before = multiarray._get_madvise_hugepage()
    try:
        multiarray._set_madvise_hugepage(True)
        assert memory.skip_hugepage_hints() is True
        assert multiarray._get_madvise_hugepage() is False
        big = np.ones(3 << 20, np.float32)  # arrays are still made as usual
        assert float(big.sum()) == 3 << 20
    finally:
        multiarray._set_madvise_hugepage(before)


def test_glibc_malloc_settings_apply_where_malloc_is_glibcs():
    glibc = platform.libc_ver()[0] == "glibc"
    assert memory.keep_freed_memory() is glibc
    assert memory.release_freed_memory() in ((True, False) if glibc else (False,))
