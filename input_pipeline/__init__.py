"""Grain input pipelines for training: synthetic faces (the default), folders of images, TFDS datasets.

`pipeline.create_train_iterator(config.input, ...)` is the entry point; `pipeline.default_input_config()`
documents every setting.
"""
