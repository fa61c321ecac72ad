"""The parent process: runs a grid's cells (locally, as torchrun workers or as Slurm jobs), schedules them onto
cores and GPUs, records their rows, and shows progress on the console."""
