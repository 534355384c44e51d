"""Pixel-BERT (Huang et al., arXiv 2004.00849): CNN pixel features + BERT, random pixel sampling in pre-training."""
