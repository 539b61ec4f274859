"""Export to ONNX with the numeric comparison against the framework: one module per framework.

``torch_onnx``: a PyTorch module (eager or TorchScript). ``keras_onnx``: a Keras model on the torch backend, and
the NCHW rewrite tf2onnx's output shares. The format plug-ins (models/formats/) call these; pipeline/ reaches
them through the plug-ins.
"""
