"""Prediction: batched TTA with the inverse transforms, camera joints, the ONNX backend, own pictures."""
