"""nn.Modules: one mixer a file. Each mixer maps (b, l, d) -> (b, l, d) and has
`forward(x, cache=None, seq_idx=None)` and `allocate_state(batch_size, dtype, device) -> dict`."""
