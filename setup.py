from setuptools import Extension, find_packages, setup

setup(
    name="fixres-fast",
    version="0.1.0",
    description="FixRes, fast: train at low resolution, adapt cheaply to the test resolution.",
    long_description=open("README.md").read() if __import__("os").path.exists("README.md") else "",
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["fixres_fast", "fixres_fast.*"]) + ["fixres_fast.pipelines"],
    # the recipes (`fixres-fast run NAME`): pipelines/ in the source tree, fixres_fast/pipelines/ once installed
    package_dir={"fixres_fast.pipelines": "pipelines"},
    package_data={"fixres_fast.pipelines": ["*.toml"]},
    # region decoding for the ffcv backend: libjpeg's API (Debian: libjpeg62-turbo-dev; libjpeg-turbo >= 1.5);
    # records' CRC-32: zlib (Debian: zlib1g-dev)
    ext_modules=[Extension("fixres_fast.loaders._jpeg", ["fixres_fast/loaders/_jpeg.c"], libraries=["jpeg", "z"])],
    install_requires=[
        "torch>=2.4",
        "torchvision>=0.19",
        "numpy>=1.24",
        "pillow>=10",
        "click>=8.1",
        "tqdm>=4.60",
        "scipy>=1.10",
        "matplotlib>=3.7",
        "ffcv>=1.0.2",
        "nvidia-dali-cuda120>=2.0",
    ],
    extras_require={"test": ["pytest>=8", "timm>=1.0", "tensorboard>=2.15"], "tensorboard": ["tensorboard>=2.15"]},
    entry_points={"console_scripts": ["fixres-fast=fixres_fast.cli:main"]},
)
