"""Shipping the student: the checked ONNX export (`onnx`), the latency table (`latency`) and
the deployment block of metrics.json (`deployment`)."""
