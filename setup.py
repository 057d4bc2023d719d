from setuptools import Extension, find_packages, setup

FFCV = ["ffcv>=1.0.2"]
DALI = ["nvidia-dali-cuda120>=2.0"]
DALI_CUDA130 = ["nvidia-dali-cuda130>=2.0"]

setup(
    name="fixres-fast",
    version="0.1.0",
    description="FixRes, fast: train at low resolution, adapt cheaply to the test resolution.",
    long_description=open("README.md").read() if __import__("os").path.exists("README.md") else "",
    long_description_content_type="text/markdown",
    license="BSD-3-Clause",
    python_requires=">=3.10",
    packages=find_packages(include=["fixres_fast", "fixres_fast.*"]) + ["fixres_fast.pipelines"],
    # the recipes (`fixres-fast run NAME`): pipelines/ in the source tree, fixres_fast/pipelines/ once installed
    package_dir={"fixres_fast.pipelines": "pipelines"},
    package_data={"fixres_fast.pipelines": ["*.toml"]},
    # region decoding for the ffcv backend: libjpeg's API (Debian: libjpeg62-turbo-dev; libjpeg-turbo >= 1.5);
    # records' CRC-32: zlib (Debian: zlib1g-dev)
    ext_modules=[Extension("fixres_fast.loaders._jpeg", ["fixres_fast/loaders/_jpeg.c"], libraries=["jpeg", "z"])],
    # what the core package and the torch backend import: numba compiles geometry's RoC sampler and the CPU
    # kernels (loaders/kernels.py: crop, resample, normalise); timm and safetensors open and export pretrained models
    install_requires=[
        "torch>=2.4",
        "torchvision>=0.19",
        "numpy>=1.24",
        "numba>=0.59",
        "pillow>=10",
        "click>=8.1",
        "tqdm>=4.60",
        "scipy>=1.10",
        "matplotlib>=3.7",
        "timm>=1.0.31",
        "safetensors>=0.4",
    ],
    # the other two loader backends, each optional: `auto` picks among those installed
    extras_require={
        "ffcv": FFCV,
        "dali": DALI,  # DALI for CUDA 12; nvidia-dali-cuda130 (CUDA 13) works as well: pip install '.[dali-cuda130]'
        "dali-cuda130": DALI_CUDA130,
        "all": FFCV + DALI,
        "test": ["pytest>=8", "pytest-xdist>=3.5", "tensorboard>=2.15"],
        "tensorboard": ["tensorboard>=2.15"],
    },
    entry_points={"console_scripts": ["fixres-fast=fixres_fast.cli:main"]},
)
