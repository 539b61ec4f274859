"""The ResNeXt family (PyTorch) and loading of the models users bring. Importing this needs torch."""
