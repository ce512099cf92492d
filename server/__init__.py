"""gloro-serve: the online service (FastAPI + onnxruntime). Never imports torch."""
