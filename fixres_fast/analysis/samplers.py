"""The RoC samplers the loaders use, drawn alone: what `analyze scale` and `analyze roc` measure.

``geometry`` (:func:`~fixres_fast.geometry.random_resized_crop`: the FFCV backend and the torch backend on a
GPU), ``torchvision`` (``RandomResizedCrop.get_params``: the torch backend on a CPU) and ``dali``
(``fn.random_crop_generator``, the RoC generator of the DALI backend's ``decoders.image_random_crop``, given the
same arguments; DALI is imported only then).
"""
from __future__ import annotations

import numpy as np

from .. import geometry
from ..errors import UserError
from ..spec import TrainDA

SAMPLERS = ("geometry", "torchvision", "dali")
MAX_ATTEMPTS = TrainDA.max_attempts  # torchvision's rejection loop; get_params hard-codes the same 10


def draw_rocs(sampler: str, height: int, width: int, area_range, aspect_range, n: int, seed: int = 0) -> np.ndarray:
    """(n, 2) float array of RoC (h, w) drawn by ``sampler`` in a ``height`` x ``width`` image."""
    if sampler == "geometry":
        geometry.seed(seed)
        boxes = [geometry.random_resized_crop(height, width, *area_range, *aspect_range, MAX_ATTEMPTS) for _ in range(n)]
        return np.array([(h, w) for _, _, h, w in boxes], dtype=float)
    if sampler == "torchvision":
        import torch
        from torchvision.transforms import RandomResizedCrop

        torch.manual_seed(seed)
        image = torch.empty(1, 1, 1).expand(1, height, width)  # only its shape is read
        boxes = [RandomResizedCrop.get_params(image, list(area_range), list(aspect_range)) for _ in range(n)]
        return np.array([(h, w) for _, _, h, w in boxes], dtype=float)
    if sampler == "dali":
        return _draw_dali(height, width, area_range, aspect_range, n, seed)
    raise UserError(f"unknown sampler {sampler!r}; choose among {', '.join(SAMPLERS)}")


def _draw_dali(height, width, area_range, aspect_range, n, seed) -> np.ndarray:
    from ..loaders import require

    require("dali", "the dali RoC sampler", "choose another sampler")
    from nvidia.dali import fn, pipeline_def, types

    batch = min(n, 1000)
    shapes = [np.array([height, width], dtype=np.int64)] * batch

    @pipeline_def(batch_size=batch, num_threads=1, device_id=None, seed=seed)
    def rocs():
        shape = fn.external_source(source=lambda: shapes, batch=True, dtype=types.INT64)
        _, roc = fn.random_crop_generator(shape, random_area=list(area_range), random_aspect_ratio=list(aspect_range),
                                          num_attempts=MAX_ATTEMPTS)
        return roc

    pipe = rocs()
    out = [np.array(pipe.run()[0].as_array()) for _ in range(-(-n // batch))]
    return np.concatenate(out)[:n].astype(float)
