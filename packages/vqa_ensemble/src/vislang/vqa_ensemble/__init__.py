"""VQA Challenge 2019 runner-up (MSM@MSRA): stronger detector features, BERT questions, MCAN, ensembling."""
