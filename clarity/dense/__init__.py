"""A dense network beside the patch CNN: a small 3D U-Net trained on human masks (or on
cell-sized ellipsoids at labelled centres), whose probability map's peaks are the cells.

- :mod:`clarity.dense.unet`: the network and its per-level pooling planned from the voxel size;
- :mod:`clarity.dense.train`: seeded training on random crops;
- :mod:`clarity.dense.predict`: the probability map of a whole volume, tile by tile, and its peaks;
- :mod:`clarity.dense.files`: saving and loading a trained network with its settings.
"""

from .files import TrainedUNet, load_unet, save_unet
from .predict import peak_cells, probability_map
from .train import DenseTrainConfig, DenseTrainResult, DenseVolume, ellipsoid_target, train_unet
from .unet import UNet3D, UNetConfig, plan_pools

__all__ = ["UNet3D", "UNetConfig", "plan_pools", "DenseTrainConfig", "DenseTrainResult", "DenseVolume",
           "ellipsoid_target", "train_unet", "probability_map", "peak_cells", "TrainedUNet", "save_unet", "load_unet"]
