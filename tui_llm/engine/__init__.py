"""The training engine: model, kernels, data, checkpoints, tokenizer, sampler, trainer. No UI imports."""
