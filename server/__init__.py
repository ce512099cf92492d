"""gloro-serve: the online service (FastAPI + onnxruntime). Never imports torch."""

from functools import cache
from importlib import metadata


@cache
def package_version() -> str:
    try:
        return metadata.version("gloro-serve")
    except metadata.PackageNotFoundError:
        return "0+unknown"
