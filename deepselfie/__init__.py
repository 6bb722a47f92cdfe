"""deepselfie: the pipeline of "What a Deep Neural Network thinks about your #selfie".

This package holds the shared plumbing (config, console output, errors, the CLI); the stages live in
the packages ``scrape``, ``label`` and ``models``.
"""
__version__ = "0.1.0"
