from setuptools import find_packages, setup

setup(
    name="megatron_zppo",
    version="0.1.0",
    description="ZPPO (Zone of Proximal Policy Optimization) on Megatron-Core with SGLang rollouts",
    python_requires=">=3.12",
    packages=find_packages(include=["megatron_zppo", "megatron_zppo.*"]),
    package_data={"megatron_zppo": ["templates/*.txt"]},
    # Dependencies are pinned in requirements*.txt and installed by scripts/install.sh,
    # because megatron-bridge must be installed with --no-deps (see that script).
    install_requires=[],
)
