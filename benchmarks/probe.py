"""Run ``run.py ARGS`` unchanged, writing time.time() at the end of the first optimizer step.

Usage: ``python probe.py STAMP_FILE run.py ARGS...``. The hook is global to torch's optimizers,
so nothing in the package changes; torch is imported before the command line instead of
during it, which moves its import time but does not add to it.
"""

from __future__ import annotations

import runpy
import sys
import time
from pathlib import Path


def main() -> None:
    stamp, script, *args = sys.argv[1:]
    from torch.optim.optimizer import register_optimizer_step_post_hook

    handle = None

    def first_step(optimizer, *_):
        with open(stamp, "w", encoding="utf-8") as fh:
            fh.write(f"{time.time():.6f}\n")
        handle.remove()

    handle = register_optimizer_step_post_hook(first_step)
    sys.argv = [script, *args]
    sys.path[0] = str(Path(script).resolve().parent)  # as if run.py were run directly
    runpy.run_path(script, run_name="__main__")


if __name__ == "__main__":
    main()
