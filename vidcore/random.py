"""Random tensors drawn exactly as diffusers draws them, so seeds give the same noise."""

from __future__ import annotations

import torch


def randn_tensor(shape, generator: torch.Generator | list[torch.Generator] | None = None,
                 device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> torch.Tensor:
    """Gaussian noise made on the generator's device, then moved to ``device``.

    A list of generators draws one batch element per generator. Drawing on the generator's device
    (normally the CPU) keeps results identical across CPU and GPU runs.
    """
    device = torch.device(device) if device is not None else torch.device("cpu")
    if isinstance(generator, (list, tuple)):
        if len(generator) == 1:
            generator = generator[0]
        else:
            if len(generator) != shape[0]:
                raise ValueError(f"got {len(generator)} generators for a batch of {shape[0]}")
            parts = [randn_tensor((1, *shape[1:]), g, device, dtype) for g in generator]
            return torch.cat(parts, dim=0)
    gen_device = generator.device if generator is not None else device
    if gen_device.type != device.type and gen_device.type != "cpu":
        raise ValueError(f"cannot draw on generator device {gen_device} for tensors on {device}")
    return torch.randn(shape, generator=generator, device=gen_device, dtype=dtype).to(device)
