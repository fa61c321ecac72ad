"""The parent process: runs a grid's cells (locally or as torchrun workers), schedules them onto
cores and GPUs, records their rows, and shows progress on the console."""
