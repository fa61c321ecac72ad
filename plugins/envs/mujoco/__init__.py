"""MuJoCo families: the Diff-DAC wind and mass variants and Packer's HalfCheetah and Hopper."""
