"""manylabel serving side: manifest, preprocessing, onnxruntime sessions, the BentoML service.

Nothing in this package imports torch or `training`.
"""
