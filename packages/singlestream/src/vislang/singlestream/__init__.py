"""The single-stream image-text core shared by SOHO and Pixel-BERT (see ``model``, ``data``, ``module``).

Kept import-light: importing the package does not import Lightning or transformers; import the
submodules (``vislang.singlestream.model`` etc.) for the classes.
"""
