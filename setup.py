"""Packaging beyond pyproject.toml: conf/ stays at the top of the repository, where users look for it,
and the wheel ships it as convdissect/conf (pyproject can find packages or map a directory to one, not both)."""

from setuptools import find_namespace_packages, find_packages, setup

conf = ["convdissect.conf", *(f"convdissect.conf.{group}" for group in find_namespace_packages("conf"))]
setup(
    packages=[*find_packages("src"), *conf],
    package_dir={"": "src", "convdissect.conf": "conf"},
    package_data={package: ["*.yaml"] for package in conf},
)
