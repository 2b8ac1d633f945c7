"""The training engine every stage of every system runs on: the loop and its hooks (``trainer``, ``hooks``),
atomic checkpoints and exact resume (``checkpoint``), run directories (``run_dir``), stopping on a signal
(``interrupt``), mixed precision (``precision``), processes (``distributed``), schedules, losses, and the
scripts' entry point (``cli``)."""
