"""Stage 2 of TRCE, Denoising Trajectory Steering (paper Sec. 4.2), at cluster scale.

Data flows one way: `plan` decides every draw training will make (which trajectory, which step) -> `cache` samples
the original model's trajectories with Ray Data, only as deep as those draws, and stores the reference predictions
-> `run` fine-tunes the stage-1 model with Ray Train against the cached targets (no reference model in memory)
-> `stage2.safetensors`. `trce_ray.workflow.run_erasure` runs stage 1, the cache and stage 2 in order.
"""
