"""Deployment: choosing and exporting a trial (policy file, plain-ultralytics .pt, ONNX, torch-pruning ratios)
and re-applying a policy file to its base model."""
