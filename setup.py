from setuptools import find_packages, setup

setup(
    name="ppdigitalhuman",
    version="0.1.0",
    description="PaddlePaddle research library: 3D face reconstruction (FLAME/DECA) and latent diffusion",
    packages=find_packages(include=["ppengine*", "ppface3d*", "ppldm*", "ppapp*"]),
    package_data={"": ["*.cc", "*.cu", "*.h", "*.yml", "*.json", "*.txt"]},
    python_requires=">=3.9",
    install_requires=[],  # see requirements.txt + constraints.txt (pinned set)
)
