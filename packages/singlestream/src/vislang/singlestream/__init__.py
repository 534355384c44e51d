"""The single-stream image-text core shared by SOHO and Pixel-BERT (``model``, ``data``, ``module``, ``metrics``,
``convert``; see the package README).

Kept import-light: importing the package does not import Lightning or transformers; import the
submodules (``vislang.singlestream.model`` etc.) for the classes.
"""
