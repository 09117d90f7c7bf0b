"""igcli: Integrated Gradients for any ONNX model, from the command line."""

__version__ = "0.1.0"
