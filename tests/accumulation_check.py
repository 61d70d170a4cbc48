"""The one check both models' `backward(accumulate=True)` tests share."""

import numpy as np


def assert_accumulate_adds(model, batches, rtol: float = 1e-6) -> None:
    """backward(accumulate=True) after a second batch leaves, in every tensor, the sum of what
    backward() writes for each batch alone."""
    alone = []
    for x, y in batches:
        model.forward(x, y, training=True)
        model.backward()
        alone.append(model.grads.flat.copy())
    for i, (x, y) in enumerate(batches):
        model.forward(x, y, training=True)
        model.backward(accumulate=i > 0)
    expected = alone[0].astype(np.float64) + alone[1]
    for name, (start, end) in model.params.offsets.items():
        want = expected[start:end]
        err = np.max(np.abs(model.grads.flat[start:end] - want)) / max(np.max(np.abs(want)), 1e-30)
        assert err < rtol, f"{name}: relative error {err:.2e}"
