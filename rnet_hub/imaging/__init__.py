"""Imaging: DICOM read as the pretraining exporter wrote it, the pretraining transform, and embeddings.

* :mod:`.dicom`: DICOM and image files -> 8-bit frames, with the exporter's window and CR rules;
* :mod:`.transforms`: letterbox and scale exactly as in pretraining, from a model's ``pretrained_cfg``;
* :mod:`.embed`: embeddings of whole folders, written as ``.npy`` + ``.csv`` (+ Parquet).

:mod:`rnet_hub.preprocess` keeps the public names of the first two.
"""
