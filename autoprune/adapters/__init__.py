"""All contact with third-party libraries lives here, one adapter per library: ``yolo`` (and ``yolo_*``) for
ultralytics, ``pruning`` for torch-pruning, ``onnx_runtime`` for ONNX Runtime and onnx, ``openvino_runtime`` for
OpenVINO and NNCF."""
