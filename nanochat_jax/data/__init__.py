"""Package data: ``sample/`` holds the embedded offline pretraining corpus.

A package (not a bare directory) so that setuptools' ``packages.find`` ships
``data/sample/*.parquet`` with the wheel; see ``nanochat_jax.dataset.sample_data_dir``.
"""
