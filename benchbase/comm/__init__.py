"""Communication between learners: topology → mixing plan, flat parameters, transports (shared
memory, gloo, NCCL) and mixing rules (diffusion, push-sum)."""
