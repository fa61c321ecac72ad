"""Communication between learners: topology → mixing plan (`mixing_plan`), flat parameters
(`flat`), message layout (`layout`), unreliable links (`links`), transports behind one interface
(`transports`: shared memory via `shm`, gloo, NCCL, all-reduce), mixing rules (`rules`: diffusion,
bounded-staleness diffusion, push-sum), consensus measurement (`consensus`), and the per-learner
`communicator` that composes them."""
