"""Helpers shared by the tests, importable as `support.*` (pytest puts tests/ on sys.path: pyproject's `pythonpath`).

- `support.stages`: small stages for the core tests (`support.stages:CountingSource` in a YAML config).
- `support.rtsp_server`: a real RTSP server (gst-rtsp-server) in a child process on 127.0.0.1.
- `support.onnx_models`: small ONNX models exported by torch for the inference and stage tests.
"""
