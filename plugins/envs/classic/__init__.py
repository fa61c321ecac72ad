"""Packer et al.'s classic-control families (CartPole, MountainCar, Acrobot, Pendulum), vectorised."""
