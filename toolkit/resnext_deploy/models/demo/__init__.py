"""The demo models and their data: the digits demo, its Keras twin, the ResNeXt stand-in and the hostile (unsafe) checkpoints."""
